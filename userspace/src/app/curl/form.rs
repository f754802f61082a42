//! -F: a multipart/form-data body (RFC 7578) laid out as curl lays it out.
use super::{CurlError, fail};

/// One field: its name, content, and the file name and type curl gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Part {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// curl's guess for a file part's type: its own short table, octet-stream otherwise.
fn type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "txt" => "text/plain",
        "htm" | "html" => "text/html",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

fn read_file(path: &str) -> Result<Vec<u8>, CurlError> {
    let result = if path == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).map(|_| v)
    } else {
        std::fs::read(path)
    };
    result.map_err(|_| fail(26, "Failed to open/read local data from file/application"))
}

/// Parses one -F argument: name=value, name=@file, name=<file, with ;type= and
/// ;filename= after the content.
fn parse(arg: &str, literal: bool) -> Result<Part, CurlError> {
    let (name, content) = arg
        .split_once('=')
        .ok_or_else(|| fail(2, format!("Illegally formatted input field: '{arg}'")))?;
    let mut part = Part {
        name: name.to_string(),
        filename: None,
        content_type: None,
        data: Vec::new(),
    };
    if literal {
        part.data = content.as_bytes().to_vec();
        return Ok(part);
    }
    let mut fields = content.split(';');
    let value = fields.next().unwrap_or_default();
    for field in fields {
        let field = field.trim_start();
        if let Some(t) = field.strip_prefix("type=") {
            part.content_type = Some(t.to_string());
        } else if let Some(f) = field.strip_prefix("filename=") {
            part.filename = Some(f.trim_matches('"').to_string());
        }
    }
    if let Some(path) = value.strip_prefix('@') {
        part.data = read_file(path)?;
        let base = std::path::Path::new(path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        if part.filename.is_none() && path != "-" {
            part.filename = Some(base);
        }
        if part.content_type.is_none() {
            part.content_type = Some(type_for(part.filename.as_deref().unwrap_or("")).into());
        }
    } else if let Some(path) = value.strip_prefix('<') {
        part.data = read_file(path)?;
    } else {
        part.data = value.as_bytes().to_vec();
    }
    Ok(part)
}

/// A fresh boundary: 24 dashes and 16 random hex digits, as curl 7.88 makes them.
fn boundary() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("------------------------{hex}")
}

fn layout(parts: &[Part], boundary: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", p.name);
        if let Some(f) = &p.filename {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        out.extend_from_slice(disposition.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(t) = &p.content_type {
            out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&p.data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// The body for every -F then every --form-string, and its boundary.
pub fn build(form: &[String], form_string: &[String]) -> Result<(Vec<u8>, String), CurlError> {
    let mut parts = Vec::new();
    for f in form {
        parts.push(parse(f, false)?);
    }
    for f in form_string {
        parts.push(parse(f, true)?);
    }
    let b = boundary();
    Ok((layout(&parts, &b), b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_files_and_types_laid_out_like_curl() {
        let dir = std::env::temp_dir().join(format!("curl-form-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.txt");
        std::fs::write(&file, "hello\n").unwrap();
        let f = file.display();
        let parts = vec![
            parse("a=1", false).unwrap(),
            parse(&format!("f=@{f}"), false).unwrap(),
            parse(&format!("g=<{f}"), false).unwrap(),
            parse(&format!("h=@{f};type=x/y;filename=z.bin"), false).unwrap(),
            parse("s=@not;a file", true).unwrap(),
        ];
        let body = String::from_utf8(layout(&parts, "B")).unwrap();
        assert_eq!(
            body,
            "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n\
             --B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\n\r\n\
             --B\r\nContent-Disposition: form-data; name=\"g\"\r\n\r\nhello\n\r\n\
             --B\r\nContent-Disposition: form-data; name=\"h\"; filename=\"z.bin\"\r\nContent-Type: x/y\r\n\r\nhello\n\r\n\
             --B\r\nContent-Disposition: form-data; name=\"s\"\r\n\r\n@not;a file\r\n\
             --B--\r\n"
        );
        assert_eq!(parse("x=@/no/such/file", false).unwrap_err().code, 26);
        assert_eq!(type_for("a.bin"), "application/octet-stream");
        assert_eq!(type_for("A.PNG"), "image/png");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

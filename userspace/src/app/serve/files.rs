//! What a static file server answers, decided without I/O on the connection: the file a
//! target names (or a redirect, or a listing), validators (ETag, Last-Modified), the
//! conditional requests (RFC 9110 section 13), single byte ranges (section 14) and the
//! content type (mime_guess).
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a request target leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    File(PathBuf),
    /// A directory named without its final '/': send the client there.
    Redirect(String),
    /// A directory without index.html, listed (--list).
    Listing(PathBuf),
}

/// Maps a request target to what is under `root`: 403 for paths that try to leave it,
/// 404 for what is not there. Directories serve their index.html.
pub fn resolve(root: &Path, target: &str, list: bool) -> Result<Found, u16> {
    let mut parts = target.splitn(2, '?');
    let path = parts.next().unwrap_or("/");
    let query = parts.next();
    let path = path.split('#').next().unwrap_or("/");
    if !path.starts_with('/') {
        return Err(404);
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| 404u16)?;
    if decoded.contains('\0') {
        return Err(404);
    }
    let mut out = root.to_path_buf();
    for component in Path::new(decoded.as_ref()).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(403),
        }
    }
    // Symlinks that lead outside the root are refused too.
    let real = match (out.canonicalize(), root.canonicalize()) {
        (Ok(real), Ok(base)) if real.starts_with(&base) => real,
        (Ok(_), Ok(_)) => return Err(403),
        _ => return Err(404),
    };
    if real.is_dir() {
        if !path.ends_with('/') {
            let mut location = format!("{path}/");
            if let Some(q) = query {
                location.push('?');
                location.push_str(q);
            }
            return Ok(Found::Redirect(location));
        }
        let index = real.join("index.html");
        if index.is_file() {
            return Ok(Found::File(index));
        }
        return if list {
            Ok(Found::Listing(real))
        } else {
            Err(404)
        };
    }
    Ok(Found::File(real))
}

/// A file's validators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub len: u64,
    pub modified: SystemTime,
    pub etag: String,
}

impl Validators {
    pub fn new(len: u64, modified: SystemTime) -> Validators {
        let secs = modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Validators {
            len,
            modified,
            etag: format!("\"{secs:x}-{len:x}\""),
        }
    }

    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(self.modified)
    }

    fn modified_secs(&self) -> u64 {
        self.modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// The request's conditions say the client's copy is current: 304.
    /// If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2).
    pub fn not_modified(
        &self,
        if_none_match: Option<&str>,
        if_modified_since: Option<&str>,
    ) -> bool {
        if let Some(tags) = if_none_match {
            return tags.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == self.etag
            });
        }
        if let Some(since) = if_modified_since.and_then(|s| httpdate::parse_http_date(s).ok()) {
            let since = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return self.modified_secs() <= since;
        }
        false
    }
}

/// The answer to a Range header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Full,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// A single byte range ("a-b", "a-", "-n"); several ranges or other units get the whole
/// file, as does an If-Range that no longer matches.
pub fn range(header: Option<&str>, if_range: Option<&str>, v: &Validators) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Full;
    };
    if let Some(cond) = if_range {
        let cond = cond.trim();
        let current = if cond.starts_with('"') {
            cond == v.etag
        } else {
            httpdate::parse_http_date(cond).is_ok_and(|t| {
                t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) == v.modified_secs()
            })
        };
        if !current {
            return Range::Full;
        }
    }
    if spec.contains(',') {
        return Range::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let len = v.len;
    if first.is_empty() {
        // The last n bytes.
        let Ok(n) = last.parse::<u64>() else {
            return Range::Full;
        };
        if n == 0 || len == 0 {
            return Range::Unsatisfiable;
        }
        return Range::Part(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = first.parse::<u64>() else {
        return Range::Full;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match last.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return Range::Full,
        }
    };
    if start >= len {
        return Range::Unsatisfiable;
    }
    Range::Part(start, end.min(len - 1))
}

/// The Content-Type for a file, from its extension.
pub fn content_type(path: &Path) -> String {
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    if mime.type_() == mime_guess::mime::TEXT {
        format!("{}; charset=utf-8", mime.essence_str())
    } else {
        mime.essence_str().to_string()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// --list: an HTML index of a directory, entries sorted, directories with a '/'.
pub fn listing(dir: &Path, url_path: &str) -> String {
    let mut names: Vec<(String, bool)> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .map(|e| {
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    (e.file_name().to_string_lossy().into_owned(), is_dir)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let title = html_escape(url_path);
    let mut out = format!(
        "<!doctype html>\n<html>\n<head><title>Index of {title}</title></head>\n<body>\n<h1>Index of {title}</h1>\n<ul>\n"
    );
    if url_path != "/" {
        out.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (name, is_dir) in names {
        let slash = if is_dir { "/" } else { "" };
        let href: String =
            percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        out.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{}{slash}</a></li>\n",
            html_escape(&name)
        ));
    }
    out.push_str("</ul>\n</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn v() -> Validators {
        Validators::new(100, UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    #[test]
    fn ranges_single_suffix_open_and_unsatisfiable() {
        let v = v();
        assert_eq!(range(None, None, &v), Range::Full);
        assert_eq!(range(Some("bytes=0-9"), None, &v), Range::Part(0, 9));
        assert_eq!(range(Some("bytes=90-"), None, &v), Range::Part(90, 99));
        assert_eq!(range(Some("bytes=90-500"), None, &v), Range::Part(90, 99));
        assert_eq!(range(Some("bytes=-10"), None, &v), Range::Part(90, 99));
        assert_eq!(range(Some("bytes=-500"), None, &v), Range::Part(0, 99));
        assert_eq!(range(Some("bytes=100-"), None, &v), Range::Unsatisfiable);
        assert_eq!(range(Some("bytes=0-1,5-6"), None, &v), Range::Full);
        assert_eq!(range(Some("items=0-1"), None, &v), Range::Full);
        assert_eq!(range(Some("bytes=5-1"), None, &v), Range::Full);
        // If-Range: only while the validator still matches.
        assert_eq!(
            range(Some("bytes=0-9"), Some(&v.etag), &v),
            Range::Part(0, 9)
        );
        assert_eq!(range(Some("bytes=0-9"), Some("\"old\""), &v), Range::Full);
        let lm = v.last_modified();
        assert_eq!(range(Some("bytes=0-9"), Some(&lm), &v), Range::Part(0, 9));
        assert_eq!(
            range(Some("bytes=0-9"), Some("Mon, 01 Jan 2001 00:00:00 GMT"), &v),
            Range::Full
        );
    }

    #[test]
    fn conditionals() {
        let v = v();
        assert!(v.not_modified(Some(&v.etag), None));
        assert!(v.not_modified(Some("\"x\", *"), None));
        assert!(!v.not_modified(Some("\"x\""), Some(&v.last_modified())));
        assert!(v.not_modified(None, Some(&v.last_modified())));
        assert!(!v.not_modified(None, Some("Mon, 01 Jan 2001 00:00:00 GMT")));
        assert!(!v.not_modified(None, Some("garbage")));
        assert_eq!(v.etag, "\"6553f100-64\"");
    }

    #[test]
    fn targets_files_redirects_listings_and_escapes() {
        let dir = std::env::temp_dir().join(format!("serve-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub/empty")).unwrap();
        std::fs::write(dir.join("index.html"), "i").unwrap();
        std::fs::write(dir.join("sub/a b.txt"), "a").unwrap();
        let base = dir.canonicalize().unwrap();
        assert_eq!(
            resolve(&dir, "/", false).unwrap(),
            Found::File(base.join("index.html"))
        );
        assert!(resolve(&dir, "/sub/a%20b.txt?x=1", false).is_ok());
        assert_eq!(
            resolve(&dir, "/sub?q=1", false).unwrap(),
            Found::Redirect("/sub/?q=1".into())
        );
        assert_eq!(resolve(&dir, "/sub/", false), Err(404));
        assert_eq!(
            resolve(&dir, "/sub/", true).unwrap(),
            Found::Listing(base.join("sub"))
        );
        assert_eq!(resolve(&dir, "/../etc/passwd", false), Err(403));
        assert_eq!(
            resolve(&dir, "/sub/%2e%2e/%2e%2e/etc/passwd", false),
            Err(403)
        );
        assert_eq!(resolve(&dir, "/nope", false), Err(404));
        assert_eq!(resolve(&dir, "/a%00b", false), Err(404));
        let list = listing(&base.join("sub"), "/sub/");
        assert!(
            list.contains("<a href=\"a%20b%2Etxt\">a b.txt</a>"),
            "{list}"
        );
        assert!(list.contains("<a href=\"empty/\">empty/</a>"), "{list}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn types_from_the_crate() {
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
        assert_eq!(content_type(Path::new("a.svg")), "image/svg+xml");
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.unknownext")),
            "application/octet-stream"
        );
    }
}

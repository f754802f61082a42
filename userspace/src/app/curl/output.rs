//! Where a body goes: stdout or a file (made when the first byte arrives), the binary
//! warning for terminals, and the progress display.
use super::progress::Progress;
use super::{CurlError, EXIT_WRITE_ERROR, fail};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// stdout; `explicit` is -o - (no binary check).
    Stdout {
        explicit: bool,
    },
    File(PathBuf),
}

pub struct Sink {
    pub dest: Dest,
    out: Option<std::io::BufWriter<Box<dyn Write>>>,
    /// Append to the file (resume with -C) instead of truncating it.
    append: bool,
    create_dirs: bool,
    check_binary: bool,
    /// Not -s: warnings are shown.
    show_warnings: bool,
    /// -N: every write reaches the destination at once.
    pub unbuffered: bool,
    /// Bytes written to the destination (headers included).
    pub written: u64,
    pub progress: Progress,
}

/// Body pieces at least this large are written straight to the destination, not
/// through the output buffer.
const WRITE_THROUGH: usize = 32 * 1024;

/// Standard output was closed when curl started (`>&-`).
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes whether stdout was closed when the process started (`>&-`), for curl's exit
/// 23 at the first byte of a body meant for it. Rust's runtime has by then put
/// /dev/null, opened read-write, in place of every closed standard descriptor (so no
/// socket takes the number, as curl's own start-up check ensures); a shell's
/// `>/dev/null` opens it write-only.
pub fn note_closed_stdout() {
    let null = std::fs::read_link("/proc/self/fd/1").is_ok_and(|p| p == Path::new("/dev/null"));
    let read_write = std::fs::read_to_string("/proc/self/fdinfo/1").is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|flags| flags & 0o3 == 0o2)
    });
    STDOUT_CLOSED.store(null && read_write, std::sync::atomic::Ordering::Relaxed);
}

fn write_error(e: std::io::Error) -> CurlError {
    fail(
        EXIT_WRITE_ERROR,
        format!("Failure writing output to destination: {e}"),
    )
}

impl Sink {
    pub fn new(
        dest: Dest,
        append: bool,
        create_dirs: bool,
        show_warnings: bool,
        progress: Progress,
    ) -> Sink {
        let check_binary =
            matches!(dest, Dest::Stdout { explicit: false }) && std::io::stdout().is_terminal();
        Sink {
            dest,
            out: None,
            append,
            create_dirs,
            check_binary,
            show_warnings,
            unbuffered: false,
            written: 0,
            progress,
        }
    }

    fn open(&mut self) -> Result<&mut std::io::BufWriter<Box<dyn Write>>, CurlError> {
        if self.out.is_none() {
            let out: std::io::BufWriter<Box<dyn Write>> = match &self.dest {
                Dest::Stdout { .. } if STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(fail(EXIT_WRITE_ERROR, "Failed writing body"));
                }
                Dest::Stdout { .. } => std::io::BufWriter::with_capacity(
                    1 << 16,
                    Box::new(std::io::stdout()) as Box<dyn Write>,
                ),
                Dest::File(path) => {
                    if self.create_dirs
                        && let Some(parent) = path.parent()
                    {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .append(self.append)
                        .truncate(!self.append)
                        .open(path)
                        .map_err(|e| {
                            fail(
                                EXIT_WRITE_ERROR,
                                format!(
                                    "Failure writing output to destination: {}: {e}",
                                    path.display()
                                ),
                            )
                        })?;
                    std::io::BufWriter::with_capacity(1 << 20, Box::new(file) as Box<dyn Write>)
                }
            };
            self.out = Some(out);
        }
        Ok(self.out.as_mut().expect("opened above"))
    }

    /// Writes response headers (-i, -I).
    pub fn write_head(&mut self, data: &[u8]) -> Result<(), CurlError> {
        self.open()?.write_all(data).map_err(write_error)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Writes body bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CurlError> {
        if self.check_binary && !data.is_empty() {
            self.check_binary = false;
            if data.contains(&0) {
                if self.show_warnings {
                    eprintln!(
                        "Warning: Binary output can mess up your terminal. Use \"--output -\" to tell \n\
                     Warning: curl to output it to your terminal anyway, or consider \"--output \n\
                     Warning: <FILE>\" to save to a file."
                    );
                }
                // The warning says it all: curl prints no "(23)" line after it.
                return Err(fail(EXIT_WRITE_ERROR, ""));
            }
        }
        let unbuffered = self.unbuffered;
        let out = self.open()?;
        if data.len() >= WRITE_THROUGH {
            // A large piece (the stack lends its receive buffer) goes out as it is, after
            // what the buffer holds: no copy into the buffer first.
            out.flush().map_err(write_error)?;
            out.get_mut().write_all(data).map_err(write_error)?;
        } else {
            out.write_all(data).map_err(write_error)?;
        }
        if unbuffered {
            out.flush().map_err(write_error)?;
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Flushes; a file is made even when nothing was written.
    pub fn finish(&mut self) -> Result<(), CurlError> {
        self.progress.finish();
        if let Some(out) = &mut self.out {
            out.flush().map_err(write_error)?;
        } else if matches!(self.dest, Dest::File(_)) {
            self.open()?.flush().map_err(write_error)?;
        }
        self.out = None;
        Ok(())
    }
}

/// -O: the last segment of the URL's path.
pub fn remote_name(url: &url::Url) -> Result<PathBuf, CurlError> {
    let name = url.path().rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        return Err(fail(EXIT_WRITE_ERROR, "Remote file name has no length!"));
    }
    Ok(PathBuf::from(name))
}

/// -J: the file name of a Content-Disposition header, without any directory.
pub fn disposition_name(value: &str) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    let at = lower.find("filename=")?;
    let rest = &value[at + "filename=".len()..];
    let name = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next()?
    } else {
        rest.split(';').next()?.trim()
    };
    let base = name.rsplit(['/', '\\']).next()?;
    (!base.is_empty()).then(|| base.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_from_url_and_disposition() {
        let u = url::Url::parse("http://h/a/b.txt?x=1").unwrap();
        assert_eq!(remote_name(&u).unwrap(), PathBuf::from("b.txt"));
        let u = url::Url::parse("http://h/").unwrap();
        assert_eq!(remote_name(&u).unwrap_err().code, EXIT_WRITE_ERROR);
        assert_eq!(
            disposition_name("attachment; filename=\"../x/dl.txt\"").as_deref(),
            Some("dl.txt")
        );
        assert_eq!(
            disposition_name("attachment; FileName=plain.bin; size=3").as_deref(),
            Some("plain.bin")
        );
        assert_eq!(disposition_name("inline"), None);
    }
}

//! The child's side of taking over a connection its parent had at fork (see `moves`,
//! the parent's side): requests on the child's end of the pair made at fork.
use std::io::Read;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

/// The longest a child waits for its parent's answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The longest request or answer line.
pub const LINE_MAX: usize = 256;

/// Writes all of `bytes` to the pair end `fd`, without SIGPIPE when the other process
/// is gone (the error says so instead), waiting at most the socket's send timeout.
pub fn send_all(fd: RawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: sends at most `bytes.len()` bytes from `bytes`; no address.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                bytes.as_ptr(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Requests on one pair end go one at a time.
static ASKING: Mutex<()> = Mutex::new(());

/// In the child: asks the parent, through `via`, for the connection (local, remote):
/// the bytes its stack imports, or why not.
pub fn take(via: RawFd, local: SocketAddr, remote: SocketAddr) -> Result<Vec<u8>, String> {
    let _one = ASKING.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: the child's end of its pair with the parent, open for the process's
    // life (close-on-exec); this view never closes it.
    let mut end = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(via) });
    let _ = end.set_read_timeout(Some(ANSWER_WITHIN));
    let asked = send_all(via, format!("TAKE {local} {remote}\n").as_bytes());
    asked.map_err(|e| format!("asking the parent: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < LINE_MAX {
        match end.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Ok(_) => return Err("the parent is gone".to_string()),
            Err(e) => return Err(format!("waiting for the parent: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).to_string();
    let len: usize = match line.strip_prefix("OK ").map(str::parse) {
        Some(Ok(len)) => len,
        _ => {
            let why = line.strip_prefix("NO ").unwrap_or(&line);
            return Err(format!("the parent said: {why}"));
        }
    };
    let mut bytes = vec![0; len];
    end.read_exact(&mut bytes)
        .map_err(|e| format!("reading the connection from the parent: {e}"))?;
    Ok(bytes)
}

/// In the child: it closed an inherited connection without taking it.
pub fn let_go(via: RawFd, local: SocketAddr, remote: SocketAddr) {
    let _one = ASKING.lock().unwrap_or_else(|p| p.into_inner());
    let _ = send_all(via, format!("DROP {local} {remote}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::{let_go, take};
    use std::io::{BufRead, BufReader, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A parent that reads one request line and answers `reply`: the line it read.
    fn parent(end: UnixStream, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&end).read_line(&mut line).unwrap();
            (&end).write_all(reply).unwrap();
            line
        })
    }

    #[test]
    fn a_child_asks_for_a_connection_and_gets_its_bytes_or_the_parents_reason() {
        let (local, remote) = (
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:4000".parse().unwrap(),
        );
        let (child, end) = UnixStream::pair().unwrap();
        let asked = parent(end, b"OK 5\nhello");
        assert_eq!(take(child.as_raw_fd(), local, remote).unwrap(), b"hello");
        assert_eq!(asked.join().unwrap(), "TAKE 10.0.0.1:80 10.0.0.2:4000\n");

        let (child, end) = UnixStream::pair().unwrap();
        let _ = parent(end, b"NO another took it\n");
        let why = take(child.as_raw_fd(), local, remote).unwrap_err();
        assert!(why.contains("another took it"), "{why}");

        // The parent cut short, or gone: an error, never a hang.
        let (child, end) = UnixStream::pair().unwrap();
        let _ = parent(end, b"OK 9\nhello");
        assert!(take(child.as_raw_fd(), local, remote).is_err());
        let (child, end) = UnixStream::pair().unwrap();
        drop(end);
        assert!(take(child.as_raw_fd(), local, remote).is_err());

        let (child, end) = UnixStream::pair().unwrap();
        let_go(child.as_raw_fd(), local, remote);
        let mut line = String::new();
        BufReader::new(&end).read_line(&mut line).unwrap();
        assert_eq!(line, "DROP 10.0.0.1:80 10.0.0.2:4000\n");
    }
}

//! Reading a response: the head through httparse, the body's framing (RFC 9112 section
//! 6.3), the chunked coding (section 7.1) and the content codings (flate2, brotli).
use super::{CurlError, EXIT_RECV_ERROR, fail};
use std::io::Write;

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The head as received, status line to the empty line included.
    pub head: Vec<u8>,
    /// Header names and values in order (names as sent).
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// The connection ends after this response whatever its headers say (a request
    /// body was left unsent).
    pub close: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The connection cannot carry another request after this response.
    pub fn closes(&self) -> bool {
        self.close
            || self.framing == Framing::UntilClose
            || self
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || self.head.starts_with(b"HTTP/1.0")
                && !self
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive"))
    }
}

/// curl's limit on one header line, the status line included (CURL_MAX_HTTP_HEADER).
pub const MAX_HEADER_LINE: usize = 100 * 1024;
/// curl's limit on a response's header lines together (MAX_HTTP_RESP_HEADER_SIZE).
pub const MAX_HEADERS_SIZE: usize = 300 * 1024;

/// curl's limits on the head in `raw` (complete or not), line by line as curl reads
/// it: a line of 100 KiB is "Out of memory" (27), and header lines over 300 KiB in all
/// are a receive error (56). True when the head is complete.
pub fn check_head_limits(raw: &[u8]) -> Result<bool, CurlError> {
    let mut total = 0usize;
    let mut rest = raw;
    loop {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // The line so far, and the byte curl's buffer keeps for its terminator.
            if rest.len() + 1 > MAX_HEADER_LINE {
                return Err(fail(27, "Out of memory"));
            }
            return Ok(false);
        };
        let line = end + 1;
        if line + 1 > MAX_HEADER_LINE {
            return Err(fail(27, "Out of memory"));
        }
        total += line;
        if total > MAX_HEADERS_SIZE {
            return Err(fail(
                EXIT_RECV_ERROR,
                format!("Too large response headers: {total} > {MAX_HEADERS_SIZE}"),
            ));
        }
        // The empty line ends the head.
        if rest[..end]
            .strip_suffix(b"\r")
            .unwrap_or(&rest[..end])
            .is_empty()
        {
            return Ok(true);
        }
        rest = &rest[line..];
    }
}

/// A broken status line is curl's exit 1: no "HTTP/" at all is an HTTP/0.9 reply,
/// which curl does not allow; "HTTP/" with a bad version or code is an unsupported
/// version.
fn status_line_error(raw: &[u8]) -> CurlError {
    if raw.starts_with(b"HTTP/") {
        fail(
            super::EXIT_UNSUPPORTED_PROTOCOL,
            "Unsupported HTTP version in response",
        )
    } else {
        fail(
            super::EXIT_UNSUPPORTED_PROTOCOL,
            "Received HTTP/0.9 when not allowed",
        )
    }
}

/// Content-Length as curl reads it (curlx_strtoofft): the last such header, its
/// leading digits; no digits is a weird reply (8), a number too large for 63 bits
/// is no length at all.
fn content_length(value: &str) -> Result<Option<u64>, CurlError> {
    let digits: &str = {
        let v = value.trim_start();
        let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
        &v[..end]
    };
    if digits.is_empty() {
        return Err(fail(8, "Illegal Content-Length: in response"));
    }
    Ok(digits.parse::<i64>().ok().map(|n| n as u64))
}

/// Parses a complete head from `raw`: None while more bytes are needed.
pub fn parse_head(raw: &[u8], head_request: bool) -> Result<Option<(usize, Response)>, CurlError> {
    if !check_head_limits(raw)? {
        // The status line alone, as soon as it is there: a broken one fails at once.
        let first = raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw, |end| &raw[..=end]);
        let mut resp = httparse::Response::new(&mut []);
        if let Err(httparse::Error::Version | httparse::Error::Status) = resp.parse(first) {
            return Err(status_line_error(raw));
        }
        return Ok(None);
    }
    // One slot per line: the limits above bound the count.
    let lines = raw.iter().filter(|&&b| b == b'\n').count() + 1;
    let mut headers = vec![httparse::EMPTY_HEADER; lines];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version | httparse::Error::Status) => {
            return Err(status_line_error(raw));
        }
        Err(e) => return Err(fail(8, format!("Weird server reply: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    // The last of a repeated header, as curl, which reads them one after the other.
    let find = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Framing::None
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        Framing::Chunked
    } else if let Some(len) = find("content-length").map(content_length).transpose()? {
        len.map_or(Framing::UntilClose, Framing::Length)
    } else {
        Framing::UntilClose
    };
    Ok(Some((
        n,
        Response {
            status,
            head: raw[..n].to_vec(),
            headers,
            framing,
            close: false,
        },
    )))
}

/// Incremental decoder for the chunked transfer coding.
#[derive(Default)]
pub struct Chunked {
    buf: Vec<u8>,
    remaining: u64,
    pub done: bool,
    in_data: bool,
}

impl Chunked {
    /// Feeds raw bytes; calls `out` with decoded body bytes.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<(), CurlError> {
        while !input.is_empty() && !self.done {
            if self.in_data {
                let n = (self.remaining as usize).min(input.len());
                out(&input[..n])?;
                self.remaining -= n as u64;
                input = &input[n..];
                if self.remaining == 0 {
                    self.in_data = false;
                }
                continue;
            }
            self.buf.extend_from_slice(input);
            input = &[];
            // Skip the CRLF after a chunk's data, then parse the next size line.
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((used, size))) => {
                    let rest = self.buf.split_off(used);
                    self.buf.clear();
                    if size == 0 {
                        self.done = true;
                        return Ok(());
                    }
                    self.remaining = size;
                    self.in_data = true;
                    self.feed(&rest, out)?;
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(fail(EXIT_RECV_ERROR, "Recv failure: bad chunk size")),
            }
        }
        Ok(())
    }
}

/// The Accept-Encoding curl sends with --compressed, for the codings decoded here.
pub const ACCEPT_ENCODING: &str = "deflate, gzip, br, zstd";

/// Undoes the Content-Encoding of a body as it streams in.
pub enum Decoder {
    Identity,
    Gzip(Box<flate2::write::GzDecoder<Vec<u8>>>),
    Deflate(Box<flate2::write::ZlibDecoder<Vec<u8>>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    /// zstd (ruzstd) decodes the whole body at its end.
    Zstd(Vec<u8>),
}

fn bad_encoding(e: std::io::Error) -> CurlError {
    fail(
        61,
        format!("Error while processing content unencoding: {e}"),
    )
}

impl Decoder {
    /// The decoder for a Content-Encoding value; identity when not asked to decode.
    pub fn new(encoding: Option<&str>, decode: bool) -> Decoder {
        if !decode {
            return Decoder::Identity;
        }
        match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            Some("gzip" | "x-gzip") => {
                Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some("deflate") => {
                Decoder::Deflate(Box::new(flate2::write::ZlibDecoder::new(Vec::new())))
            }
            Some("br") => {
                Decoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
            Some("zstd") => Decoder::Zstd(Vec::new()),
            _ => Decoder::Identity,
        }
    }

    /// Decodes `input`, passing what comes out to `out`.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<(), CurlError> {
        let produced = match self {
            Decoder::Identity => return out(input),
            Decoder::Gzip(d) => {
                d.write_all(input).map_err(bad_encoding)?;
                std::mem::take(d.get_mut())
            }
            Decoder::Deflate(d) => {
                d.write_all(input).map_err(bad_encoding)?;
                std::mem::take(d.get_mut())
            }
            Decoder::Brotli(d) => {
                d.write_all(input).map_err(bad_encoding)?;
                std::mem::take(d.get_mut())
            }
            Decoder::Zstd(held) => {
                held.extend_from_slice(input);
                return Ok(());
            }
        };
        if produced.is_empty() {
            Ok(())
        } else {
            out(&produced)
        }
    }

    /// The end of the body: flushes what the decoder still holds.
    pub fn finish(
        self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), CurlError>,
    ) -> Result<(), CurlError> {
        let rest = match self {
            Decoder::Identity => return Ok(()),
            Decoder::Gzip(d) => d.finish().map_err(bad_encoding)?,
            Decoder::Deflate(d) => d.finish().map_err(bad_encoding)?,
            Decoder::Brotli(d) => d
                .into_inner()
                .map_err(|_| fail(61, "Error while processing content unencoding: brotli"))?,
            Decoder::Zstd(held) => {
                let mut out = Vec::new();
                let mut input = held.as_slice();
                // A body may hold several frames, one after the other.
                while !input.is_empty() {
                    let mut frame =
                        ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| {
                            fail(
                                61,
                                format!("Error while processing content unencoding: {e}"),
                            )
                        })?;
                    std::io::Read::read_to_end(&mut frame, &mut out).map_err(bad_encoding)?;
                }
                out
            }
        };
        if rest.is_empty() { Ok(()) } else { out(&rest) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_decoding_across_reads() {
        let body = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        for split in 1..body.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let mut w = |b: &[u8]| {
                out.extend_from_slice(b);
                Ok(())
            };
            d.feed(&body[..split], &mut w).unwrap();
            d.feed(&body[split..], &mut w).unwrap();
            assert!(d.done, "split {split}");
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.", "split {split}");
        }
    }

    fn decode_all(encoding: &str, data: &[u8]) -> Vec<u8> {
        let mut d = Decoder::new(Some(encoding), true);
        let mut out = Vec::new();
        for piece in data.chunks(3) {
            d.feed(piece, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        d.finish(&mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn content_codings_decode_in_pieces() {
        let text = b"hello hello hello compressed world\n".repeat(20);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        assert_eq!(decode_all("gzip", &gz.finish().unwrap()), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(decode_all("deflate", &z.finish().unwrap()), text);
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        assert_eq!(decode_all("br", &br), text);
        let zstd = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode_all("zstd", &zstd), text);
        assert_eq!(decode_all("identity", &text), text);
    }

    #[test]
    fn broken_heads_fail_with_curls_codes() {
        let code = |raw: &[u8]| parse_head(raw, false).err().map(|e| e.code);
        assert_eq!(code(b"garbage line\r\n\r\nbody"), Some(1));
        assert_eq!(code(b"garbage"), Some(1));
        assert_eq!(code(b"HTTP/1.1 abc OK\r\n\r\n"), Some(1));
        assert_eq!(
            code(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Some(8)
        );
        // One line of 100 KiB (with the byte for its end) is curl's out of memory,
        // complete or still arriving.
        let mut line = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        line.resize(17 + MAX_HEADER_LINE - 1, b'a');
        assert_eq!(code(&line), None);
        line.push(b'a');
        assert_eq!(code(&line), Some(27));
        // Header lines over 300 KiB together: 56, many headers below that are fine.
        let many = |n: usize| {
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            raw.extend(b"X: y\r\n".repeat(n));
            raw.extend(b"\r\n");
            raw
        };
        let (_, r) = parse_head(&many(20_000), false).unwrap().unwrap();
        assert_eq!(r.headers.len(), 20_000);
        assert_eq!(code(&many(51_198)), Some(EXIT_RECV_ERROR));
        // The last Content-Length counts, by its leading digits.
        let (_, r) = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5, 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, Framing::Length(5));
    }

    #[test]
    fn head_framing() {
        let (n, r) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false)
            .unwrap()
            .unwrap();
        assert_eq!((n, r.framing, r.closes()), (38, Framing::Length(5), false));
        let (_, r) = parse_head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(r.closes());
        let (_, r) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, Framing::None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n", false).unwrap().is_none());
    }
}

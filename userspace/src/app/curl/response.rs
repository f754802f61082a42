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

/// Parses a complete head from `raw`: None while more bytes are needed.
pub fn parse_head(raw: &[u8], head_request: bool) -> Result<Option<(usize, Response)>, CurlError> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
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
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let framing = if head_request || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Framing::None
    } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        Framing::Chunked
    } else if let Some(len) = find("content-length") {
        Framing::Length(
            len.parse()
                .map_err(|_| fail(8, "Weird server reply: bad Content-Length"))?,
        )
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

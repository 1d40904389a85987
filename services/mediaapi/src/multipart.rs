//! The federation media API's `multipart/mixed` answers: exactly two
//! parts, a JSON object of metadata, then the file (its bytes with their
//! `Content-Type` and `Content-Disposition`, or a `Location` to fetch them
//! from). Written as a stream around the file's bytes, and read as one:
//! the metadata and both parts' headers are read whole under small caps,
//! the file's bytes pass through as they arrive, never held whole.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// The longest metadata part read.
pub(crate) const MAX_METADATA: usize = 64 * 1024;
/// The longest header block of a part, and the preamble before the first.
const MAX_HEADERS: usize = 16 * 1024;

/// A new boundary: random, so no file can contain it by chance.
pub(crate) fn boundary() -> String {
    ganglion_base::random::alphanumeric(32)
}

/// What goes before the file's bytes: the metadata part, then the file
/// part's headers.
pub(crate) fn head(boundary: &str, file_headers: &[(&str, &str)]) -> Bytes {
    let mut head =
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n");
    for (name, value) in file_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    Bytes::from(head)
}

/// What goes after the file's bytes.
pub(crate) fn tail(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// The boundary of a `multipart/mixed` content type.
pub(crate) fn boundary_of(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';');
    let essence = parts.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim().trim_matches('"');
        // RFC 2046: 1 to 70 characters.
        (!value.is_empty() && value.len() <= 70 && !value.contains(['\r', '\n']))
            .then(|| value.to_owned())
    })
}

/// Why an answer was not a federation media answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum MultipartError {
    #[error("the answer is not multipart as the federation media API's are: {0}")]
    Malformed(&'static str),
    #[error("reading the answer: {0}")]
    Read(String),
}

/// A part's headers, names lowercased.
pub(crate) type Headers = Vec<(String, String)>;

pub(crate) fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

type Source = futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A multipart body being read: what has arrived and not been taken yet.
struct Reader {
    source: Source,
    buffer: BytesMut,
    /// `\r\n--boundary`: what ends a part.
    delimiter: Vec<u8>,
    ended: bool,
}

impl Reader {
    /// Reads more; false at the end of the source.
    async fn fill(&mut self) -> Result<bool, MultipartError> {
        if self.ended {
            return Ok(false);
        }
        match self.source.next().await {
            Some(Ok(chunk)) => {
                self.buffer.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(error)) => Err(MultipartError::Read(error.to_string())),
            None => {
                self.ended = true;
                Ok(false)
            }
        }
    }

    /// Reads until `needle` is in the buffer (searching no further than
    /// `cap` bytes); what came before it, the needle consumed.
    async fn until(&mut self, needle: &[u8], cap: usize) -> Result<Bytes, MultipartError> {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(needle.len());
            if let Some(at) = memchr::memmem::find(&self.buffer[from..], needle) {
                let at = from + at;
                let before = self.buffer.split_to(at).freeze();
                let _ = self.buffer.split_to(needle.len());
                return Ok(before);
            }
            searched = self.buffer.len();
            if searched > cap + needle.len() {
                return Err(MultipartError::Malformed(
                    "a part's headers or metadata too long",
                ));
            }
            if !self.fill().await? {
                return Err(MultipartError::Malformed("the answer ends early"));
            }
        }
    }

    /// A part's header block, up to and with its empty line.
    async fn headers(&mut self) -> Result<Headers, MultipartError> {
        while self.buffer.len() < 2 {
            if !self.fill().await? {
                return Err(MultipartError::Malformed("the answer ends early"));
            }
        }
        // No headers at all: the empty line at once.
        if self.buffer.starts_with(b"\r\n") {
            let _ = self.buffer.split_to(2);
            return Ok(Vec::new());
        }
        let block = self.until(b"\r\n\r\n", MAX_HEADERS).await?;
        let block = std::str::from_utf8(&block)
            .map_err(|_| MultipartError::Malformed("headers not UTF-8"))?;
        let mut headers = Vec::new();
        for line in block.split("\r\n").filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or(MultipartError::Malformed("a header line without a colon"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        Ok(headers)
    }
}

/// The second part of a federation media answer, being read.
pub(crate) struct FilePart {
    /// Its headers (`content-type`, `content-disposition`, or `location`).
    pub(crate) headers: Headers,
    /// Its bytes, as they arrive; ends with an error if the answer does
    /// not close the part.
    pub(crate) bytes: futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// Reads a federation media answer with `boundary` up to the file's bytes:
/// the metadata (a JSON object), and the file part to stream.
pub(crate) async fn read(
    source: Source,
    boundary: &str,
) -> Result<(serde_json::Value, FilePart), MultipartError> {
    let mut reader = Reader {
        source,
        buffer: BytesMut::new(),
        delimiter: format!("\r\n--{boundary}").into_bytes(),
        ended: false,
    };
    // The first delimiter may open the body without a CRLF before it;
    // anything before it is a preamble to skip. Seeing it as ending an
    // empty "line" makes both cases one.
    reader.buffer.extend_from_slice(b"\r\n");
    let delimiter = reader.delimiter.clone();
    reader.until(&delimiter, MAX_HEADERS).await?;
    reader.until(b"\r\n", MAX_HEADERS).await?;
    let metadata_headers = reader.headers().await?;
    if !header(&metadata_headers, "content-type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim() == "application/json")
    }) {
        return Err(MultipartError::Malformed("the first part is not JSON"));
    }
    let metadata = reader.until(&delimiter, MAX_METADATA).await?;
    let metadata: serde_json::Value = serde_json::from_slice(&metadata)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or(MultipartError::Malformed(
            "the metadata is not a JSON object",
        ))?;
    // `--` here would close the body with one part only.
    let after = reader.until(b"\r\n", MAX_HEADERS).await?;
    if !after.iter().all(|b| *b == b' ' || *b == b'\t') {
        return Err(MultipartError::Malformed("the answer has no file part"));
    }
    let headers = reader.headers().await?;
    Ok((
        metadata,
        FilePart {
            headers,
            bytes: file_bytes(reader).boxed(),
        },
    ))
}

/// The file part's bytes: everything before the next delimiter, passed on
/// as it arrives but for a tail that could be the delimiter's beginning.
fn file_bytes(reader: Reader) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let keep = reader.delimiter.len();
        loop {
            if let Some(at) = memchr::memmem::find(&reader.buffer, &reader.delimiter) {
                let last = reader.buffer.split_to(at).freeze();
                // The rest (`--` and an epilogue) is not read.
                return (!last.is_empty()).then_some((Ok(last), None));
            }
            if reader.buffer.len() > keep {
                let ready = reader.buffer.split_to(reader.buffer.len() - keep).freeze();
                return Some((Ok(ready), Some(reader)));
            }
            match reader.fill().await {
                Ok(true) => continue,
                Ok(false) => {
                    let error = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file part is not closed",
                    );
                    return Some((Err(error), None));
                }
                Err(error) => {
                    return Some((Err(std::io::Error::other(error.to_string())), None));
                }
            }
        }
    })
}

/// A source of `chunks` (tests: any split of a body).
#[cfg(test)]
pub(crate) fn source_of(chunks: Vec<Vec<u8>>) -> Source {
    futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer(boundary: &str, headers: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
        let mut body = head(boundary, headers).to_vec();
        body.extend_from_slice(file);
        body.extend_from_slice(&tail(boundary));
        body
    }

    fn split(body: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut chunks = Vec::new();
        let mut from = 0;
        for cut in cuts {
            chunks.push(body[from..cut].to_vec());
            from = cut;
        }
        chunks.push(body[from..].to_vec());
        chunks
    }

    async fn read_all(
        chunks: Vec<Vec<u8>>,
        boundary: &str,
    ) -> Result<(serde_json::Value, Headers, Result<Vec<u8>, String>), MultipartError> {
        let (metadata, mut part) = read(source_of(chunks), boundary).await?;
        let mut file = Vec::new();
        while let Some(chunk) = part.bytes.next().await {
            match chunk {
                Ok(chunk) => file.extend_from_slice(&chunk),
                Err(error) => return Ok((metadata, part.headers, Err(error.to_string()))),
            }
        }
        Ok((metadata, part.headers, Ok(file)))
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn the_spec_example_reads_back() {
        let body = b"--gc0p4Jq0M2Yt08jU534c0p\r\nContent-Type: application/json\r\n\r\n{}\r\n--gc0p4Jq0M2Yt08jU534c0p\r\nContent-Type: text/plain\r\n\r\nThis media is plain text. Maybe somebody used it as a paste bin.\r\n--gc0p4Jq0M2Yt08jU534c0p--".to_vec();
        let (metadata, headers, file) =
            run(read_all(vec![body], "gc0p4Jq0M2Yt08jU534c0p")).expect("read");
        assert_eq!(metadata, serde_json::json!({}));
        assert_eq!(header(&headers, "Content-Type"), Some("text/plain"));
        assert_eq!(
            file.expect("file"),
            b"This media is plain text. Maybe somebody used it as a paste bin.".to_vec()
        );
        // The Location form: no bytes.
        let body = b"preamble\r\n--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\nLocation: https://cdn.example.org/ab/c1/2345.txt\r\n\r\n\r\n--b--".to_vec();
        let (_, headers, file) = run(read_all(vec![body], "b")).expect("read");
        assert_eq!(
            header(&headers, "location"),
            Some("https://cdn.example.org/ab/c1/2345.txt")
        );
        assert_eq!(file.expect("file"), Vec::<u8>::new());
    }

    #[test]
    fn what_is_not_the_answer_is_refused() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "ends early"),
            (
                b"--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b--",
                "not JSON",
            ),
            (
                b"--b\r\nContent-Type: application/json\r\n\r\n[]\r\n--b\r\n\r\nx\r\n--b--",
                "object",
            ),
            (
                b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--\r\n",
                "no file part",
            ),
            (
                b"--b\r\nContent-Type: application/json\r\n\r\n{}",
                "ends early",
            ),
            (
                b"--b\r\nno colon here\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b--",
                "colon",
            ),
        ];
        for (body, why) in cases {
            let error = run(read_all(vec![body.to_vec()], "b")).expect_err(why);
            assert!(error.to_string().contains(why), "{why}: {error}");
        }
        // A file part that never closes ends its stream with an error.
        let (_, _, file) = run(read_all(
            vec![
                b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\r\nunfinished"
                    .to_vec(),
            ],
            "b",
        ))
        .expect("head read");
        assert!(file.is_err());
        // Metadata past its cap is not read on.
        let mut long = b"--b\r\nContent-Type: application/json\r\n\r\n{\"a\":\"".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_METADATA + 10));
        let error = run(read_all(vec![long], "b")).expect_err("capped");
        assert!(error.to_string().contains("too long"), "{error}");
    }

    #[test]
    fn boundaries_are_taken_from_multipart_mixed_only() {
        assert_eq!(
            boundary_of("multipart/mixed; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("Multipart/Mixed;charset=x; Boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("multipart/form-data; boundary=abc"), None);
        assert_eq!(boundary_of("multipart/mixed"), None);
        assert_eq!(boundary_of("multipart/mixed; boundary="), None);
        assert_eq!(
            boundary_of(&format!("multipart/mixed; boundary={}", "a".repeat(71))),
            None
        );
    }

    proptest! {
        /// However the answer arrives in pieces, the same file comes out,
        /// even one that holds the boundary's beginning or a near-delimiter.
        #[test]
        fn any_split_reads_the_same_file(
            file in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..3000),
                proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b'x')], 0..300),
            ],
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let boundary = "xx--yy";
            let mut file = file;
            // A near miss of the delimiter inside the file.
            file.extend_from_slice(b"\r\n--xx--y");
            let body = answer(boundary, &[("Content-Type", "image/png")], &file);
            let (metadata, headers, read) = run(read_all(split(&body, &cuts), boundary)).expect("read");
            prop_assert_eq!(metadata, serde_json::json!({}));
            prop_assert_eq!(header(&headers, "content-type"), Some("image/png"));
            prop_assert_eq!(read.expect("file"), file);
        }

        /// Anything at all is read or refused, never a panic.
        #[test]
        fn any_answer_is_read_or_refused(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let _ = run(read_all(split(&body, &cuts), "b"));
        }
    }
}

//! Request bodies, split into the values an application reads from them:
//! the names and values of a form, the strings of a JSON document, the text
//! parts of a multipart upload. Rules then read each value alone, so the
//! syntax around values (JSON quotes, multipart boundaries) is not taken
//! for an attack.

/// A value of a body, and whether `+` stands for a space in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Value {
    pub bytes: Vec<u8>,
    pub form: bool,
}

impl Value {
    fn raw(bytes: &[u8]) -> Value {
        Value {
            bytes: bytes.to_vec(),
            form: false,
        }
    }
}

/// What a media type's body is read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Form,
    Json,
    Multipart,
    Text,
    /// Not inspected (images, archives, octet streams).
    Opaque,
}

pub(crate) fn kind(media_type: &str) -> Kind {
    match media_type {
        "application/x-www-form-urlencoded" => Kind::Form,
        "multipart/form-data" => Kind::Multipart,
        t if t == "application/json" || t.ends_with("+json") => Kind::Json,
        t if t.starts_with("text/") || t.ends_with("/xml") || t.ends_with("+xml") => Kind::Text,
        _ => Kind::Opaque,
    }
}

/// The values of `body` read as `kind`; `content_type` carries the
/// multipart boundary.
pub(crate) fn values(kind: Kind, body: &[u8], content_type: &str) -> Vec<Value> {
    match kind {
        Kind::Form => form_values(body),
        Kind::Json => json_strings(body),
        Kind::Multipart => {
            boundary(content_type).map_or_else(|| vec![Value::raw(body)], |b| parts(body, &b))
        }
        Kind::Text => vec![Value::raw(body)],
        Kind::Opaque => Vec::new(),
    }
}

/// Names and values of `a=1&b=2`, still encoded.
pub(crate) fn form_values(body: &[u8]) -> Vec<Value> {
    body.split(|&b| b == b'&')
        .flat_map(|pair| pair.splitn(2, |&b| b == b'='))
        .filter(|v| !v.is_empty())
        .map(|v| Value {
            bytes: v.to_vec(),
            form: true,
        })
        .collect()
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Every string of a JSON text, keys included, escapes decoded. Not a
/// validator: a malformed document yields what could be read.
pub(crate) fn json_strings(body: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'"' {
            i += 1;
            continue;
        }
        let mut s = Vec::new();
        i += 1;
        while i < body.len() && body[i] != b'"' {
            if body[i] == b'\\' && i + 1 < body.len() {
                i += 1;
                match body[i] {
                    b'n' => s.push(b'\n'),
                    b't' => s.push(b'\t'),
                    b'r' => s.push(b'\r'),
                    b'b' | b'f' => s.push(b' '),
                    b'u' => {
                        let code = body
                            .get(i + 1..i + 5)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok());
                        if let Some(code) = code {
                            push_char(&mut s, char::from_u32(code).unwrap_or('\u{fffd}'));
                            i += 4;
                        }
                    }
                    other => s.push(other),
                }
            } else {
                s.push(body[i]);
            }
            i += 1;
        }
        i += 1;
        if !s.is_empty() {
            out.push(Value {
                bytes: s,
                form: false,
            });
        }
    }
    out
}

/// The `boundary` parameter of a multipart content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        let value = value.trim().trim_matches('"');
        (name.trim().eq_ignore_ascii_case("boundary") && !value.is_empty())
            .then(|| value.to_owned())
    })
}

/// The text parts of a multipart body, and the file names of every part.
/// A part whose own content type is not text (an uploaded image) is
/// skipped.
fn parts(body: &[u8], boundary: &str) -> Vec<Value> {
    let delimiter = format!("--{boundary}");
    let find = memchr::memmem::Finder::new(delimiter.as_bytes());
    let mut out = Vec::new();
    // What comes before the first delimiter is no part, yet a backend whose
    // parser sees another boundary may read it as one: it is inspected as
    // text. A body without any delimiter is therefore inspected whole.
    let preamble = &body[..find.find(body).unwrap_or(body.len())];
    if !preamble.iter().all(u8::is_ascii_whitespace) {
        out.push(Value::raw(preamble));
    }
    let mut rest = body;
    while let Some(at) = find.find(rest) {
        rest = &rest[at + delimiter.len()..];
        let end = find.find(rest).unwrap_or(rest.len());
        let part = &rest[..end];
        let Some((split, start)) = blank_line(part) else {
            // No headers' end that this parser can find, yet a backend's
            // may: the part is inspected whole rather than skipped.
            if !part.starts_with(b"--") {
                out.push(Value::raw(part));
            }
            continue;
        };
        let headers = String::from_utf8_lossy(&part[..split]).to_ascii_lowercase();
        let body = &part[start..];
        let content = body
            .strip_suffix(b"\r\n")
            .or_else(|| body.strip_suffix(b"\n"))
            .unwrap_or(body);

        if let Some(name) = headers
            .split(';')
            .find_map(|p| p.trim().strip_prefix("filename="))
        {
            let name = name.lines().next().unwrap_or("");
            out.push(Value::raw(name.trim_matches('"').as_bytes()));
        }
        let part_type = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-type:"))
            .map(|t| {
                let t = t.split(';').next().unwrap_or("").trim().to_owned();
                kind(&t)
            });
        match part_type {
            None | Some(Kind::Text | Kind::Form) => out.push(Value::raw(content)),
            Some(Kind::Json) => out.extend(json_strings(content)),
            Some(Kind::Multipart | Kind::Opaque) => {}
        }
    }
    out
}

/// The end of a part's headers: the first empty line, its line ends
/// CRLF or bare LF (parsers such as Werkzeug's take either); where the
/// headers end and where the content starts.
fn blank_line(part: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(n) = memchr::memchr(b'\n', &part[from..]) {
        let at = from + n;
        let next = &part[at + 1..];
        if next.starts_with(b"\n") {
            return Some((at, at + 2));
        }
        if next.starts_with(b"\r\n") {
            return Some((at, at + 3));
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(values: Vec<Value>) -> Vec<String> {
        values
            .into_iter()
            .map(|v| String::from_utf8_lossy(&v.bytes).into_owned())
            .collect()
    }

    #[test]
    fn media_types_choose_how_a_body_is_read() {
        assert_eq!(kind("application/x-www-form-urlencoded"), Kind::Form);
        assert_eq!(kind("application/vnd.api+json"), Kind::Json);
        assert_eq!(kind("text/plain"), Kind::Text);
        assert_eq!(kind("application/soap+xml"), Kind::Text);
        assert_eq!(kind("image/png"), Kind::Opaque);
    }

    #[test]
    fn forms_give_names_and_values_still_encoded() {
        let values = form_values(b"q=a+b%27&flag&=x");
        assert_eq!(texts(values), ["q", "a+b%27", "flag", "x"]);
    }

    #[test]
    fn json_gives_its_strings_with_escapes_decoded() {
        let values = json_strings(
            br#"{"name": "a\"b", "html": "\u003cscript\u003e", "n": 5, "list": ["x\\y"]}"#,
        );
        assert_eq!(
            texts(values),
            ["name", "a\"b", "html", "<script>", "n", "list", "x\\y"]
        );
    }

    #[test]
    fn a_multipart_body_without_its_declared_boundary_is_read_whole() {
        let other_boundary: &[u8] = b"--yyy\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n<script>x</script>\r\n--yyy--\r\n";
        let preamble: &[u8] = b"<script>x</script>\r\n--zzz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nok\r\n--zzz--\r\n";
        for body in [other_boundary, preamble] {
            let got = texts(values(
                Kind::Multipart,
                body,
                "multipart/form-data; boundary=zzz",
            ));
            assert!(got.iter().any(|v| v.contains("<script>")), "{got:?}");
        }
    }

    #[test]
    fn multipart_gives_text_parts_and_file_names_but_not_binary_content() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"empty\"\r\n\r\n\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG' or 1=1--\r\n\
--XyZ--\r\n";
        let values = parts(body, "XyZ");
        assert_eq!(texts(values), ["hello", "", "../a.png"]);
        // Bare LF line ends, as some parsers accept (a review got
        // `<script>` past the firewall this way), and a part whose headers
        // never end, which is inspected whole.
        let lf = b"--XX\nContent-Disposition: form-data; name=\"q\"\n\n<script>a</script>\n--XX\nno end of headers <b>\n--XX--\n";
        assert_eq!(
            texts(parts(lf, "XX")),
            ["<script>a</script>", "\nno end of headers <b>\n"]
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\"").as_deref(),
            Some("XyZ")
        );
    }
}

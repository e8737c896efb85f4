//! The cookies of both modes: the signed value and `Set-Cookie` line of
//! insert mode, and reading the application's `Set-Cookie` in learn mode.
//!
//! A signed value is `member.expiry.tag`: the member name percent-encoded
//! to cookie-safe characters, the expiry in Unix seconds (`0` for none),
//! and the hex HMAC-SHA256 of `pool`, member and expiry under the secret.
//! The pool is signed too, so a cookie of one pool is no key to another.

use adc_sdk::crypto::{self, Algorithm};
use adc_sdk::{text, Error};
use serde::Deserialize;

/// The `SameSite` attribute, spelt as browsers expect it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum SameSite {
    Strict,
    #[default]
    Lax,
    None,
}

/// The attributes of the cookie insert mode sets.
#[derive(Debug)]
pub(crate) struct Attributes {
    pub path: String,
    pub domain: Option<String>,
    /// `None`: secure when the request came over HTTPS.
    pub secure: Option<bool>,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl Attributes {
    pub fn validate(&self) -> Result<(), Error> {
        let plain = |v: &str| text::valid_header_value(v) && !v.contains(';');
        if !self.path.starts_with('/') || !plain(&self.path) {
            return Err(Error::new(format!(
                "cookie path {:?} must start with '/' and hold no ';'",
                self.path
            )));
        }
        if let Some(domain) = &self.domain {
            if domain.is_empty() || !plain(domain) || domain.contains(' ') {
                return Err(Error::new(format!(
                    "cookie domain {domain:?} is not a domain"
                )));
            }
        }
        Ok(())
    }

    /// The `Set-Cookie` value that stores `value` under `name`.
    pub fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age: Option<u64>,
        secure: bool,
    ) -> String {
        let mut line = format!("{name}={value}; Path={}", self.path);
        if let Some(domain) = &self.domain {
            line.push_str(&format!("; Domain={domain}"));
        }
        if let Some(age) = max_age {
            line.push_str(&format!("; Max-Age={age}"));
        }
        if secure {
            line.push_str("; Secure");
        }
        if self.http_only {
            line.push_str("; HttpOnly");
        }
        line.push_str(match self.same_site {
            SameSite::Strict => "; SameSite=Strict",
            SameSite::Lax => "; SameSite=Lax",
            SameSite::None => "; SameSite=None",
        });
        line
    }
}

/// Why a cookie was not taken; the label of `sticky_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not `member.expiry.tag`.
    Malformed,
    /// The tag is not ours.
    Forged,
    /// Signed, but past its expiry.
    Expired,
}

impl Refusal {
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Forged => "forged",
            Refusal::Expired => "expired",
        }
    }
}

/// What a valid cookie says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pinned {
    pub member: String,
    /// Unix seconds; 0 for none.
    pub expiry: u64,
    /// Signed with the current secret, not a previous one.
    pub current_key: bool,
}

impl Pinned {
    pub fn to_var(&self) -> String {
        format!(
            "{}:{}:{}",
            self.expiry,
            u8::from(self.current_key),
            self.member
        )
    }

    pub fn from_var(var: &str) -> Option<Pinned> {
        let mut parts = var.splitn(3, ':');
        let expiry = parts.next()?.parse().ok()?;
        let current_key = parts.next()? == "1";
        let member = parts.next()?.to_owned();
        Some(Pinned {
            member,
            expiry,
            current_key,
        })
    }
}

/// Signs and checks insert-mode cookie values.
pub(crate) struct Signer {
    pool: String,
    secret: Vec<u8>,
    previous: Vec<Vec<u8>>,
}

impl Signer {
    pub fn new(pool: &str, secret: Vec<u8>, previous: Vec<Vec<u8>>) -> Signer {
        Signer {
            pool: pool.to_owned(),
            secret,
            previous,
        }
    }

    fn tag(&self, key: &[u8], member: &str, expiry: &str) -> String {
        let data = format!("{}\n{member}\n{expiry}", self.pool);
        crypto::to_hex(&crypto::hmac(Algorithm::Sha256, key, data.as_bytes()))
    }

    /// The cookie value pinning `member` until `expiry` (0: no expiry).
    pub fn seal(&self, member: &str, expiry: u64) -> String {
        let member = encode_member(member);
        let expiry = expiry.to_string();
        let tag = self.tag(&self.secret, &member, &expiry);
        format!("{member}.{expiry}.{tag}")
    }

    /// Check a cookie value at `now` (Unix seconds).
    pub fn open(&self, value: &str, now: u64) -> Result<Pinned, Refusal> {
        // The member may hold dots; expiry and tag never do.
        let mut parts = value.rsplitn(3, '.');
        let (Some(tag), Some(expiry_text), Some(member)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let Ok(expiry) = expiry_text.parse::<u64>() else {
            return Err(Refusal::Malformed);
        };
        if member.is_empty() {
            return Err(Refusal::Malformed);
        }

        // Check every key so that the time taken does not tell which one
        // signed the cookie.
        let mut matched = None;
        for (i, key) in std::iter::once(&self.secret)
            .chain(&self.previous)
            .enumerate()
        {
            let expected = self.tag(key, member, expiry_text);
            if crypto::constant_time_eq(expected.as_bytes(), tag.as_bytes()) && matched.is_none() {
                matched = Some(i);
            }
        }
        let Some(key_index) = matched else {
            return Err(Refusal::Forged);
        };
        if expiry != 0 && now >= expiry {
            return Err(Refusal::Expired);
        }
        Ok(Pinned {
            member: text::percent_decode(member, false),
            expiry,
            current_key: key_index == 0,
        })
    }
}

/// Percent-encode every byte but letters, digits, `-` and `_`: the result
/// is a valid cookie value without dots, whatever the member is called.
fn encode_member(member: &str) -> String {
    let mut out = String::with_capacity(member.len());
    for b in member.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The shared-table key of an application session. The session id is
/// hashed: keys stay short, and the table holds no usable session ids.
pub(crate) fn session_key(value: &str) -> String {
    format!(
        "session:{}",
        crypto::to_hex(&crypto::hash(Algorithm::Sha256, value.as_bytes()))
    )
}

/// The application cookie a backend's `Set-Cookie` line sets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SetCookie {
    /// The value, quotes removed.
    pub value: String,
    /// The line deletes the cookie (empty value, or `Max-Age` of 0 or less).
    pub removal: bool,
}

/// Read `line` if it sets the cookie `name`.
pub(crate) fn parse_set_cookie(line: &str, name: &str) -> Option<SetCookie> {
    let mut parts = line.split(';');
    let (n, v) = parts.next()?.split_once('=')?;
    if n.trim() != name {
        return None;
    }
    let v = v.trim();
    let value = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
        .to_owned();
    let expired = parts.any(|attr| {
        attr.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("max-age")
                && v.trim().parse::<i64>().is_ok_and(|age| age <= 0)
        })
    });
    Some(SetCookie {
        removal: expired || value.is_empty(),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use adc_sdk::testing::TestHost;

    fn signer() -> Signer {
        Signer::new(
            "web",
            b"0123456789abcdef".to_vec(),
            vec![b"previous-secret-1".to_vec()],
        )
    }

    #[test]
    fn a_sealed_value_opens_to_the_same_member() {
        let _host = TestHost::new();
        let value = signer().seal("web-1", 2_000);
        assert!(value.starts_with("web-1.2000."), "{value}");
        let pinned = signer().open(&value, 1_999).expect("valid");
        assert_eq!(
            pinned,
            Pinned {
                member: "web-1".into(),
                expiry: 2_000,
                current_key: true
            }
        );
    }

    #[test]
    fn member_names_with_dots_and_spaces_survive_the_round_trip() {
        let _host = TestHost::new();
        let value = signer().seal("10.0.0.1:80 a%b", 0);
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"%-_.".contains(&b)),
            "{value}"
        );
        assert_eq!(
            signer().open(&value, 5).expect("valid").member,
            "10.0.0.1:80 a%b"
        );
    }

    #[test]
    fn a_changed_member_expiry_or_tag_is_forged() {
        let _host = TestHost::new();
        let value = signer().seal("web-1", 2_000);
        let (_, tag) = value.rsplit_once('.').expect("has a tag");
        assert_eq!(
            signer().open(&format!("web-2.2000.{tag}"), 0),
            Err(Refusal::Forged)
        );
        assert_eq!(
            signer().open(&format!("web-1.3000.{tag}"), 0),
            Err(Refusal::Forged)
        );
        assert_eq!(signer().open("web-1.2000.00", 0), Err(Refusal::Forged));
        let other_pool = Signer::new("api", b"0123456789abcdef".to_vec(), vec![]);
        assert_eq!(other_pool.open(&value, 0), Err(Refusal::Forged));
    }

    #[test]
    fn values_that_are_not_three_parts_are_malformed() {
        let _host = TestHost::new();
        for bad in ["", "web-1", "web-1.abc", ".5.abc", "web-1.x.abc"] {
            assert_eq!(signer().open(bad, 0), Err(Refusal::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn an_expired_value_is_refused_and_zero_never_expires() {
        let _host = TestHost::new();
        assert_eq!(
            signer().open(&signer().seal("a", 100), 100),
            Err(Refusal::Expired)
        );
        assert!(signer().open(&signer().seal("a", 0), u64::MAX).is_ok());
    }

    #[test]
    fn a_previous_secret_still_opens_but_is_not_current() {
        let _host = TestHost::new();
        let old = Signer::new("web", b"previous-secret-1".to_vec(), vec![]);
        let pinned = signer()
            .open(&old.seal("web-1", 0), 0)
            .expect("previous key accepted");
        assert!(!pinned.current_key);
    }

    #[test]
    fn the_transaction_variable_round_trips() {
        let p = Pinned {
            member: "a:b".into(),
            expiry: 9,
            current_key: false,
        };
        assert_eq!(Pinned::from_var(&p.to_var()), Some(p));
    }

    #[test]
    fn set_cookie_lines_are_read_with_quotes_and_removals() {
        let read = |l: &str| parse_set_cookie(l, "JSESSIONID");
        assert_eq!(
            read("JSESSIONID=abc; Path=/").map(|c| c.value),
            Some("abc".into())
        );
        assert_eq!(
            read("JSESSIONID=\"abc\"; HttpOnly").map(|c| c.value),
            Some("abc".into())
        );
        assert_eq!(read("other=abc"), None);
        assert_eq!(
            read("jsessionid=abc"),
            None,
            "cookie names are case-sensitive"
        );
        assert!(read("JSESSIONID=abc; Max-Age=0").expect("ours").removal);
        assert!(read("JSESSIONID=; Path=/").expect("ours").removal);
        assert!(!read("JSESSIONID=abc; max-age=60").expect("ours").removal);
    }
}

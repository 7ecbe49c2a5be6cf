//! The admin token: read from `admin.token_file` at startup, or written there (mode 0600,
//! 32 random bytes as hex) when the file does not exist yet, so a fresh node or container
//! gets a secret nobody else knows. Requests prove it with `Authorization: Bearer <token>`
//! or, for the status page in a browser, the cookie that `/?token=<token>` sets.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use subtle::ConstantTimeEq;

pub const COOKIE_NAME: &str = "regcache_admin";
/// Shorter secrets are refused: a token is guessable online otherwise.
const MIN_LEN: usize = 16;

#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The token in `path`, creating the file with a new one when it is missing. Blocks.
    pub fn load_or_create(path: &Path) -> io::Result<Token> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.len() < MIN_LEN || token.contains(|c: char| c.is_whitespace() || c == ';')
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: the token must be one word of at least {MIN_LEN} characters \
                             (e.g. `openssl rand -hex 32`)",
                            path.display()
                        ),
                    ));
                }
                Ok(Token(token))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                getrandom::getrandom(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
                let token = hex::encode(bytes);
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(format!("{token}\n").as_bytes())?;
                file.sync_all()?;
                tracing::info!(path = %path.display(), "wrote a new admin token");
                Ok(Token(token))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `headers` carry this token (bearer or cookie), compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok()?.strip_prefix("Bearer "));
        let cookies = headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='));
        bearer
            .chain(cookies)
            .any(|given| self.matches(given.trim()))
    }

    pub fn matches(&self, given: &str) -> bool {
        given.len() == self.0.len() && bool::from(given.as_bytes().ct_eq(self.0.as_bytes()))
    }

    /// The `Set-Cookie` value that lets a browser in after `/?token=`.
    pub fn cookie(&self) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict",
            self.0
        )
    }

    /// The bearer header value, for operator commands.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_missing_file_gets_a_private_random_token_that_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let made = Token::load_or_create(&path).unwrap();
        assert_eq!(made.0.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let read = Token::load_or_create(&path).unwrap();
        assert!(read.matches(&made.0));

        std::fs::write(&path, "short\n").unwrap();
        let err = Token::load_or_create(&path).err().unwrap().to_string();
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn bearer_and_cookie_are_admitted_and_nothing_else() {
        let token = Token("0123456789abcdef0123".into());
        let with = |name, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(value).unwrap());
            token.admits(&headers)
        };
        assert!(with(AUTHORIZATION, "Bearer 0123456789abcdef0123"));
        assert!(with(COOKIE, "a=b; regcache_admin=0123456789abcdef0123"));
        assert!(!with(AUTHORIZATION, "Bearer 0123456789abcdef012"));
        assert!(!with(AUTHORIZATION, "Basic 0123456789abcdef0123"));
        assert!(!with(COOKIE, "regcache_admin_x=0123456789abcdef0123"));
        assert!(!token.admits(&HeaderMap::new()));
    }
}

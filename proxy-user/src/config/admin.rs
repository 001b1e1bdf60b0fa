//! `[admin]`: where the admin endpoint listens. Absent by default, and then there is none.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[admin]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The endpoint's address, e.g. `"127.0.0.1:9090"`.
    pub address: SocketAddr,
    /// Serve on a non-loopback address too. Off by default: the endpoint has no
    /// authentication (as Envoy's admin has none).
    #[serde(default)]
    pub allow_remote: bool,
}

/// Why `[admin]` is invalid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// A non-loopback address without `allow_remote`.
    #[error(
        "[admin] address {0} is not a loopback address; the admin endpoint has no \
         authentication, so set allow_remote = true to serve it there"
    )]
    Remote(SocketAddr),
}

impl AdminConfig {
    /// Refuses a non-loopback address unless `allow_remote`.
    pub fn validate(&self) -> Result<(), AdminError> {
        if !self.address.ip().is_loopback() && !self.allow_remote {
            return Err(AdminError::Remote(self.address));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(text: &str) -> Result<AdminConfig, String> {
        let admin: AdminConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        admin.validate().map_err(|e| e.to_string())?;
        Ok(admin)
    }

    #[test]
    fn loopback_unless_allowed() {
        let local = admin(r#"address = "127.0.0.1:9090""#).unwrap();
        assert!(!local.allow_remote);
        assert!(admin(r#"address = "[::1]:9090""#).is_ok());
        let err = admin(r#"address = "0.0.0.0:9090""#).unwrap_err();
        assert!(err.contains("allow_remote = true"), "{err}");
        assert!(admin("address = \"0.0.0.0:9090\"\nallow_remote = true").is_ok());
        assert!(admin(r#"address = "localhost:9090""#).is_err());
        assert!(admin("address = \"127.0.0.1:9090\"\nallowremote = true").is_err());
    }
}

//! Source address blocks for rules (`10.0.0.0/8`, `fd00::/8`, or a bare address).

use std::net::IpAddr;
use std::str::FromStr;

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address (host bits zero).
    addr: IpAddr,
    /// The prefix length.
    prefix: u8,
}

/// Why a CIDR is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("not an IP address")]
    Address,
    /// The prefix is not a number within the address family's width.
    #[error("prefix length out of range")]
    Prefix,
    /// Bits are set below the prefix, which usually means a typo (`10.1.0.0/8`).
    #[error("host bits set below the prefix")]
    HostBits,
}

impl Cidr {
    /// Whether `ip` is in the block. IPv4-mapped IPv6 sources (from dual-stack sockets)
    /// count as their IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u32::from(ip).into(), self.prefix, 32) == u32::from(net).into()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` (of a `width`-bit address) with everything below `prefix` cleared.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    let host = u32::from(width - prefix);
    if host == 128 { 0 } else { bits >> host << host }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address)?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or(CidrError::Prefix)?,
        };
        let bits = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        if mask(bits, prefix, width) != bits {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.200.1.2")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(!ten.contains(ip("fd00::1")));
        let ula: Cidr = "fd00::/8".parse().unwrap();
        assert!(ula.contains(ip("fd12::1")) && !ula.contains(ip("fe80::1")));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("1.2.3.4")));
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn refuses() {
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix));
        assert_eq!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::Prefix));
        assert_eq!("10.1.0.0/8".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!("example.com/8".parse::<Cidr>(), Err(CidrError::Address));
        assert_eq!("fd00::/129".parse::<Cidr>(), Err(CidrError::Prefix));
    }
}

//! The raw socket options and ioctls the datapath needs, as small safe wrappers.

use std::{io, mem, os::fd::AsRawFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads a socket option into a plain C type (an integer or a struct of them).
fn getsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32) -> io::Result<T> {
    // SAFETY: callers only use plain C types, for which all-zero is valid.
    let mut value: T = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

fn setsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32, value: T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
}

/// The socket cookie: the same id `bpf_get_socket_cookie` gives the kernel program.
pub fn cookie(fd: &impl AsRawFd) -> io::Result<u64> {
    getsockopt::<u64>(fd, libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// Makes the kernel run the verdict on data queued before the socket entered the map
/// (ARCHITECTURE.md, "The handoff: go and passed"): setting SO_RCVLOWAT calls the socket's
/// data-ready callback.
pub fn kick(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt::<libc::c_int>(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1)
}

/// How [`set_send_buffer`] got its way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendBuffer {
    /// SO_SNDBUFFORCE: the size asked for, above `net.core.wmem_max` if need be.
    Forced,
    /// SO_SNDBUFFORCE was refused (no CAP_NET_ADMIN); SO_SNDBUF capped it at `wmem_max`.
    Capped,
}

/// Sets the send buffer, above `wmem_max` when we have CAP_NET_ADMIN.
pub fn set_send_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<SendBuffer> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    match setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, bytes) {
        Ok(()) => Ok(SendBuffer::Forced),
        Err(_) => {
            setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes).map(|()| SendBuffer::Capped)
        }
    }
}

/// Makes the next close send RST instead of FIN.
pub fn set_linger_zero(fd: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, linger)
}

/// Undoes [`set_linger_zero`]: close sends FIN again.
pub fn clear_linger(fd: &impl AsRawFd) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, linger)
}

/// Free room in the send buffer, in the kernel's own accounting (`SO_MEMINFO`: the send
/// buffer minus the memory queued for sending, skb overhead included).
pub fn send_space(fd: &impl AsRawFd) -> io::Result<u64> {
    let info: [u32; 9] = getsockopt(fd, libc::SOL_SOCKET, libc::SO_MEMINFO)?;
    let sndbuf = info[libc::SK_MEMINFO_SNDBUF as usize];
    let queued = info[libc::SK_MEMINFO_WMEM_QUEUED as usize];
    Ok(u64::from(sndbuf.saturating_sub(queued)))
}

/// `recv(2)` without blocking, with extra `flags` (`MSG_PEEK`): for reads that must bypass
/// tokio's readiness tracking, or leave the bytes queued.
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A buffer size as the kernel reports it (`SO_RCVBUF`, `SO_SNDBUF`: twice what was set).
pub fn buffer(fd: &impl AsRawFd, which: libc::c_int) -> io::Result<u64> {
    let value: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, which)?;
    Ok(value as u64)
}

/// Bytes in the send queue not yet acknowledged by the peer (SIOCOUTQ).
pub fn send_queue(fd: &impl AsRawFd) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut value) })?;
    Ok(value as u64)
}

/// The parts of `struct tcp_info` the datapath reads.
#[derive(Clone, Copy, Debug)]
pub struct TcpInfo {
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// Bytes the peer has acknowledged, and on a socket that connected (not one that was
    /// accepted), 1 more for its SYN.
    pub bytes_acked: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
}

/// Reads `TCP_INFO`.
pub fn tcp_info(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    let info: libc::tcp_info = getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    Ok(TcpInfo {
        state: info.tcpi_state,
        bytes_acked: info.tcpi_bytes_acked,
        bytes_received: info.tcpi_bytes_received,
    })
}

/// TCP_ESTABLISHED from include/net/tcp_states.h.
pub const TCP_ESTABLISHED: u8 = 1;
/// TCP_CLOSE_WAIT: the peer half-closed; we may still send.
pub const TCP_CLOSE_WAIT: u8 = 8;

/// Half-closes the sending side: the peer sees FIN once the send queue is out.
pub fn shutdown_write(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })
}

/// The destination a REDIRECTed connection was originally sent to (SO_ORIGINAL_DST, or
/// IP6T_SO_ORIGINAL_DST for IPv6; both are option 80 in netfilter's headers).
pub fn original_dst(fd: &impl AsRawFd, ipv6: bool) -> io::Result<std::net::SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    if ipv6 {
        let addr: libc::sockaddr_in6 = getsockopt(fd, libc::SOL_IPV6, SO_ORIGINAL_DST)?;
        Ok(std::net::SocketAddr::new(
            std::net::Ipv6Addr::from(addr.sin6_addr.s6_addr).into(),
            u16::from_be(addr.sin6_port),
        ))
    } else {
        let addr: libc::sockaddr_in = getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST)?;
        Ok(std::net::SocketAddr::new(
            std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
            u16::from_be(addr.sin_port),
        ))
    }
}

/// Lets a listener accept TPROXY-ed connections for addresses that are not local.
pub fn set_ip_transparent(fd: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt::<libc::c_int>(fd, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        setsockopt::<libc::c_int>(fd, libc::SOL_IP, libc::IP_TRANSPARENT, 1)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    use super::{send_queue, tcp_info};

    /// What `datapath::sockmap` relies on when it counts the bytes a socket ever queued as
    /// `bytes_acked + SIOCOUTQ`: the connecting side's count starts at 1, the SYN.
    #[test]
    fn bytes_acked_counts_the_syn_of_a_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut connected = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut accepted, _) = listener.accept().unwrap();
        let queued = |s: &TcpStream| tcp_info(s).unwrap().bytes_acked + send_queue(s).unwrap();
        // Acknowledged or not, a written byte counts once.
        connected.write_all(b"ping").unwrap();
        accepted.write_all(b"pong!").unwrap();
        accepted.read_exact(&mut [0; 4]).unwrap();
        connected.read_exact(&mut [0; 5]).unwrap();
        assert_eq!(queued(&connected), 1 + 4);
        assert_eq!(queued(&accepted), 5);
    }
}

//! The `netlink` source: the kernel's proc connector (`NETLINK_CONNECTOR`,
//! `CN_IDX_PROC`), which multicasts every fork, exec and thread exit of the
//! host. See `include/uapi/linux/cn_proc.h` and
//! <https://docs.kernel.org/driver-api/connector.html>.
//!
//! It owns subscribing (`PROC_CN_MCAST_LISTEN`) and unsubscribing, decoding
//! `proc_event`, folding per-thread exits into one exit per thread group, and
//! turning `ENOBUFS` and per-CPU sequence gaps into `Lost`.

use std::{
    collections::HashMap,
    fmt, io,
    os::fd::{AsFd, AsRawFd},
};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_CONNECTOR};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

use super::{EventSink, ProcessTable, SourceError, SourceOptions};
use crate::event::{EventKind, EventTime, ExitStatus, ProcEvent, Process, StartTime};
use crate::proc;

/// Default socket receive buffer: room for about 50,000 events in a burst.
pub const DEFAULT_RCVBUF: usize = 4 << 20;

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const NLMSG_DONE: u16 = 3;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_COMM: u32 = 0x0000_0200;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// `struct cn_msg` header size (id.idx, id.val, seq, ack, len, flags).
const CN_MSG_LEN: usize = 20;
/// `struct proc_event` up to the union: what, cpu, timestamp_ns.
const PROC_EVENT_HEAD: usize = 16;

/// Why the `netlink` source could not be used.
#[derive(Debug)]
pub enum Refusal {
    /// The connector reports host pids; psmon's `/proc` shows another namespace's.
    NotInitPidNamespace,
    /// A missing privilege (CAP_NET_ADMIN).
    NotPermitted {
        /// What was refused.
        what: &'static str,
    },
    /// The socket could not be set up.
    Socket {
        /// What was being done.
        what: &'static str,
        /// Why.
        error: io::Error,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotInitPidNamespace => f.write_str(
                "psmon runs outside the initial PID namespace, where the kernel \
                 sends no proc connector events (run it on the host, not in a container)",
            ),
            Refusal::NotPermitted { what } => {
                write!(f, "{what} was refused: run as root (or with CAP_NET_ADMIN)")
            }
            Refusal::Socket { what, error } => write!(f, "{what} failed: {error}"),
        }
    }
}

/// The control message sent to the connector: `cn_msg` + `enum proc_cn_mcast_op`.
struct McastOp(u32);

impl NetlinkSerializable for McastOp {
    fn message_type(&self) -> u16 {
        NLMSG_DONE
    }

    fn buffer_len(&self) -> usize {
        CN_MSG_LEN + 4
    }

    fn serialize(&self, buf: &mut [u8]) {
        buf[0..4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        buf[4..8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
        buf[8..16].fill(0); // seq, ack
        buf[16..18].copy_from_slice(&4u16.to_ne_bytes()); // len of data
        buf[18..20].fill(0); // flags
        buf[20..24].copy_from_slice(&self.0.to_ne_bytes());
    }
}

/// The subscribed socket. Dropping it unsubscribes (`PROC_CN_MCAST_IGNORE`)
/// before the socket closes, however the source ends: the kernel counts
/// listeners and keeps sending events while any is left.
struct Subscription(Socket);

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = send_op(&self.0, PROC_CN_MCAST_IGNORE);
    }
}

impl std::os::fd::AsRawFd for Subscription {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The `netlink` source: a socket subscribed to the proc connector.
pub struct NetlinkSource {
    socket: Subscription,
    table: ProcessTable,
    coalesce: std::time::Duration,
}

impl NetlinkSource {
    /// Opens and subscribes the socket, or says why it cannot.
    pub fn open(options: &SourceOptions) -> Result<Self, Refusal> {
        if !proc::in_init_pid_namespace() {
            return Err(Refusal::NotInitPidNamespace);
        }
        let sock_err = |what| move |error: io::Error| Refusal::Socket { what, error };
        let mut socket = Socket::new(NETLINK_CONNECTOR).map_err(sock_err("creating the socket"))?;
        socket
            .bind(&SocketAddr::new(0, CN_IDX_PROC))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => Refusal::NotPermitted {
                    what: "joining the proc connector group",
                },
                _ => Refusal::Socket {
                    what: "binding the socket",
                    error: e,
                },
            })?;
        set_rcvbuf(&socket, options.netlink_rcvbuf);
        socket
            .set_non_blocking(true)
            .map_err(sock_err("making the socket non-blocking"))?;
        send_op(&socket, PROC_CN_MCAST_LISTEN).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => Refusal::NotPermitted {
                what: "subscribing to the proc connector",
            },
            _ => Refusal::Socket {
                what: "subscribing to the proc connector",
                error: e,
            },
        })?;
        if super::fault::deaf_from_the_start(super::SourceKind::Netlink) {
            let _ = socket.drop_membership(CN_IDX_PROC);
        }
        Ok(NetlinkSource {
            socket: Subscription(socket),
            table: ProcessTable::default(),
            coalesce: options.coalesce,
        })
    }

    /// Reads the socket into `tx` until `token` is cancelled or the
    /// consumer is gone.
    pub async fn run(
        self,
        tx: mpsc::Sender<ProcEvent>,
        token: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut sink = EventSink::new(tx);
        let mut seed = super::Seed::start();
        // SAFETY: the socket owns its fd, which stays open and the same for
        // as long as the socket lives, and the AsyncFd owns the socket.
        let fd = unsafe { AsyncFd::register_with_interest(self.socket, Interest::READABLE) }
            .map_err(|e| SourceError::Recv {
                source: e.into_parts().1,
            })?;
        let mut decoder = Decoder {
            table: self.table,
            last_seq: HashMap::new(),
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut deaf = false;
        let deafness = super::fault::Deafness::of(super::SourceKind::Netlink);
        loop {
            let mut guard = tokio::select! {
                _ = token.cancelled() => break Ok(()),
                _ = deafness.come(), if !deaf => {
                    // Out of the group, still counted as a listener: the
                    // kernel goes on sending, to everyone but this socket.
                    deaf = true;
                    if let Err(e) = fd.get_ref().0.drop_membership(CN_IDX_PROC) {
                        tracing::warn!("leaving the proc connector's group failed: {e}");
                    }
                    deafness.went();
                    continue;
                }
                _ = tokio::time::sleep(super::FLUSH_INTERVAL), if sink.pending() => {
                    if !sink.flush() {
                        break Ok(());
                    }
                    continue;
                }
                entries = seed.ready(), if seed.pending() => {
                    decoder.table.seed(entries);
                    continue;
                }
                guard = fd.readable() => match guard {
                    Ok(g) => g,
                    Err(source) => break Err(SourceError::Recv { source }),
                },
            };
            let mut closed = false;
            let mut drained = 0;
            loop {
                match fd.get_ref().0.recv(&mut &mut buf[..], 0) {
                    Ok(0) => break,
                    Ok(n) => {
                        drained += 1;
                        for event in decoder.datagram(&buf[..n]) {
                            closed |= !sink.send(event);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    // The socket overflowed: the kernel dropped messages. The
                    // sequence gaps that follow give the count.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        closed |= !sink.send(ProcEvent::lost(None));
                    }
                    Err(source) => return Err(SourceError::Recv { source }),
                }
            }
            if closed || (drained > 0 && !super::pause(self.coalesce, &token).await) {
                break Ok(());
            }
        }
    }
}

fn send_op(socket: &Socket, op: u32) -> io::Result<()> {
    let mut message = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::InnerMessage(McastOp(op)),
    );
    message.finalize();
    let mut buf = vec![0u8; message.buffer_len()];
    message.serialize(&mut buf);
    socket.send_to(&buf, &SocketAddr::new(0, 0), 0).map(|_| ())
}

/// SO_RCVBUFFORCE lets root exceed `net.core.rmem_max`; fall back to SO_RCVBUF.
fn set_rcvbuf(socket: &Socket, bytes: usize) {
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on an owned fd with a pointer to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
    tracing::warn!(
        bytes,
        "could not set the proc connector receive buffer size"
    );
}

/// Decodes datagrams into events, keeping what spans messages: the process
/// table and the last sequence number seen per CPU.
struct Decoder {
    table: ProcessTable,
    last_seq: HashMap<u32, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

impl Decoder {
    fn datagram(&mut self, mut data: &[u8]) -> Vec<ProcEvent> {
        let mut events = Vec::new();
        while let Ok(msg) = NetlinkBuffer::new_checked(data) {
            let len = msg.length() as usize;
            self.message(msg.payload(), &mut events);
            let next = (len + 3) & !3;
            if next == 0 || next >= data.len() {
                break;
            }
            data = &data[next..];
        }
        events
    }

    fn message(&mut self, cn: &[u8], events: &mut Vec<ProcEvent>) {
        let (Some(idx), Some(seq)) = (u32_at(cn, 0), u32_at(cn, 8)) else {
            return;
        };
        if idx != CN_IDX_PROC {
            return;
        }
        let ev = &cn[CN_MSG_LEN.min(cn.len())..];
        let (Some(what), Some(cpu)) = (u32_at(ev, 0), u32_at(ev, 4)) else {
            return;
        };
        let ts = ev
            .get(8..16)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap()));
        if let Some(gap) = self.sequence_gap(cpu, seq) {
            events.push(ProcEvent::lost(Some(gap)));
        }
        let data = &ev[PROC_EVENT_HEAD.min(ev.len())..];
        let field = |i: usize| u32_at(data, 4 * i);
        let time = EventTime::now(ts, Some(cpu));
        let event = match what {
            PROC_EVENT_FORK => {
                let (Some(ptgid), Some(pid), Some(tgid)) = (field(1), field(2), field(3)) else {
                    return;
                };
                if pid != tgid {
                    return; // a new thread
                }
                let mut p = describe(tgid, pid, ptgid, proc::read_entry(tgid));
                // The event's parent, not /proc's: a daemon's parent exits
                // right after the fork, and by the time /proc is read the
                // child may be init's (its lineage would be lost).
                p.ppid = ptgid;
                // /proc has the start in ticks (10 ms); the event's own
                // timestamp, taken just after the fork, makes it precise.
                p.start = Some(match p.start {
                    Some(s) => s.refined(time.boot_ns),
                    None => StartTime::from_ns(time.boot_ns),
                });
                self.table.fork(&mut p);
                EventKind::Fork(p)
            }
            PROC_EVENT_EXEC => {
                let (Some(pid), Some(tgid)) = (field(0), field(1)) else {
                    return;
                };
                let mut p = describe(tgid, pid, 0, proc::read_entry(tgid));
                // A script's path, as the kernel's own exec event says:
                // a wrapper may exec onward before it is classified.
                p.path = proc::exe(tgid).map(|exe| crate::scan::exec_target(tgid, exe));
                self.table.exec(&mut p);
                EventKind::Exec(p)
            }
            PROC_EVENT_COMM => {
                // Sent on PR_SET_NAME: the new name, kept for the exit
                // event of a process already gone.
                let (Some(pid), Some(tgid), Some(comm)) = (field(0), field(1), data.get(8..24))
                else {
                    return;
                };
                if pid == tgid {
                    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
                    self.table
                        .comm(tgid, String::from_utf8_lossy(&comm[..end]).into_owned());
                }
                return;
            }
            PROC_EVENT_EXIT => {
                let (Some(pid), Some(tgid), Some(code)) = (field(0), field(1), field(2)) else {
                    return;
                };
                // One message per thread; the group is gone when no thread
                // of it can run again.
                // A different start time means the pid was already reaped and
                // reused: the process we knew is gone.
                let known = self.table.start_of(tgid);
                let leader = proc::read_entry(tgid)
                    .filter(|e| known.is_none_or(|start| start.same_tick(e.start)));
                if !proc::group_exiting(tgid, leader.as_ref()) {
                    return;
                }
                let mut p = describe(tgid, pid, field(5).unwrap_or(0), leader);
                if !self.table.exit(&mut p) {
                    return;
                }
                EventKind::Exit {
                    process: p,
                    status: ExitStatus::from_wait_status(code),
                }
            }
            _ => return,
        };
        events.push(ProcEvent::new(event, time));
    }

    /// Messages of one CPU carry consecutive sequence numbers; a jump means
    /// the socket dropped that many.
    fn sequence_gap(&mut self, cpu: u32, seq: u32) -> Option<u64> {
        let last = self.last_seq.insert(cpu, seq)?;
        let expected = last.wrapping_add(1);
        let gap = seq.wrapping_sub(expected);
        // A huge "gap" is a wrap or restart of the counter, not a loss.
        (gap != 0 && gap < u32::MAX / 2).then_some(gap as u64)
    }
}

/// What `/proc` said of a process an event names; only ids when it is gone.
fn describe(tgid: u32, pid: u32, ppid: u32, entry: Option<proc::ProcEntry>) -> Process {
    match entry {
        Some(e) => Process {
            tgid,
            pid,
            ppid: if e.ppid != 0 { e.ppid } else { ppid },
            start: Some(e.start),
            comm: e.comm,
            path: None,
        },
        None => Process {
            tgid,
            pid,
            ppid,
            start: None,
            comm: String::new(),
            path: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_message_layout() {
        let mut message = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(McastOp(PROC_CN_MCAST_LISTEN)),
        );
        message.finalize();
        let mut buf = vec![0u8; message.buffer_len()];
        message.serialize(&mut buf);
        assert_eq!(buf.len(), 16 + 20 + 4);
        assert_eq!(u32_at(&buf, 0), Some(40)); // nlmsg_len
        assert_eq!(&buf[4..6], &NLMSG_DONE.to_ne_bytes());
        assert_eq!(u32_at(&buf, 16), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&buf, 36), Some(PROC_CN_MCAST_LISTEN));
    }

    #[test]
    fn sequence_gaps_count_lost_messages() {
        let mut d = Decoder {
            table: ProcessTable::default(),
            last_seq: HashMap::new(),
        };
        assert_eq!(d.sequence_gap(0, 10), None);
        assert_eq!(d.sequence_gap(0, 11), None);
        assert_eq!(d.sequence_gap(1, 500), None);
        assert_eq!(d.sequence_gap(0, 15), Some(3));
        assert_eq!(d.sequence_gap(1, 501), None);
        assert_eq!(d.sequence_gap(0, 0), None, "a reset is not a loss");
    }
}

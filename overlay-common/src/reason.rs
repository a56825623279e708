//! Stable verdict codes: every forward and every drop the datapath makes is counted under one of
//! these. The numbers are an interface between programs, agent and operators' dashboards: never
//! renumber, and leave retired codes in place.

/// Which program counted the packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From a local endpoint (TC ingress of its host-side veth).
    Egress = 0,
    /// From the underlay (TC ingress of the underlay interface).
    Ingress = 1,
    /// From the underlay, seen first by the XDP program (`--datapath xdp`): what it carried
    /// into an endpoint, dropped, or passed on to the stack and the TC ingress program.
    Xdp = 2,
}

impl Direction {
    pub const ALL: &'static [Direction] = &[Direction::Egress, Direction::Ingress, Direction::Xdp];

    pub const fn name(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
            Direction::Xdp => "xdp",
        }
    }
}

/// Why a packet was forwarded, passed or dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Switched to another endpoint on this node (`bpf_redirect_peer`).
    FwdLocal = 1,
    /// Encapsulated and sent to a remote VTEP.
    FwdEncap = 2,
    /// Decapsulated and delivered to a local endpoint.
    FwdDecap = 3,
    /// ARP request answered from the neighbour table.
    ArpReply = 4,
    /// Underlay traffic that is not for the overlay; handed to the kernel untouched.
    PassNotOverlay = 5,
    /// Sent to the network's gateway for an address outside every overlay: handed to this
    /// node's stack, which routes it out with the source masqueraded (the way out).
    FwdGateway = 6,
    /// A DNS question to the network's gateway address: handed to this node's stack for the
    /// agent's resolver.
    FwdResolver = 7,
    /// A DNS question for a known overlay name, answered by the datapath.
    DnsReply = 8,
    /// A ping to a service's VIP, answered by the datapath.
    VipEchoReply = 9,
    /// To a published port (the routing mesh): translated to a task and sent on to it, across
    /// the overlay with the client's own address, or to a task on this node.
    FwdMeshIn = 10,
    /// A task's reply to a client of a published port, leaving through the node that received
    /// the request with that node's address and the published port as its source.
    FwdMeshOut = 11,
    /// XDP: an overlay frame for this node that the XDP program leaves to the stack and the TC
    /// ingress program (the routing mesh, service replies, an endpoint it cannot redirect to).
    PassToTc = 12,

    /// A header ended before its fixed part did.
    Truncated = 16,
    /// 802.1Q/802.1ad tagged frame on an overlay port.
    Vlan = 17,
    /// Neither IPv4 nor ARP (IPv6 included: the overlay is IPv4-only, as Docker's default).
    UnsupportedEthertype = 18,
    /// The source MAC is not the endpoint's own.
    SpoofedMac = 19,
    /// The source IPv4 (or ARP sender address) is not the endpoint's own.
    SpoofedIp = 20,
    /// ARP that is not a request, or a request for an address with no neighbour entry.
    ArpUnanswered = 21,
    /// Broadcast or multicast destination: the overlay does not flood (nor does Docker's).
    Broadcast = 22,
    /// Unicast destination MAC not in the FDB of this VNI.
    UnknownDestination = 23,
    /// The packet came in on an interface with no endpoint entry.
    NoEndpoint = 24,
    /// VXLAN header without the I flag.
    VxlanFlags = 25,
    /// VNI not configured on this node.
    UnknownVni = 26,
    /// Outer source address is not a member VTEP.
    NotMember = 27,
    /// Outer IPv4 header with options.
    IpOptions = 28,
    /// Outer IPv4 fragment.
    Fragment = 29,
    /// The inner source MAC belongs to another VTEP (or to this node) in the FDB.
    VtepMismatch = 30,
    /// A helper that grows or shrinks the packet failed.
    AdjustFailed = 31,
    /// The node config entry is missing (agent never ran).
    NoConfig = 32,
    /// IPv4 header with a bad version or header length.
    BadIpHeader = 33,
    /// Redirect helper refused the target interface.
    RedirectFailed = 34,
    /// Sent to the gateway but addressed inside an overlay subnet (another network's, or its
    /// own the long way round): the way out never joins two overlays.
    GatewayOverlay = 35,
    /// Sent to the gateway of an internal network: it has no way out.
    GatewayInternal = 36,
    /// To a service's VIP on a port (or protocol) the service does not serve.
    ServiceNoPort = 37,
    /// To a service's VIP port while the service has no task.
    ServiceNoBackend = 38,
    /// A reply marked for the routing mesh for which this node holds no flow (its entry was
    /// evicted, or the frame is forged).
    MeshNoFlow = 39,
    /// A packet to a published port larger than the overlay can carry (its MTU): dropped and
    /// counted rather than fragmented.
    MeshTooBig = 40,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::FwdLocal,
        Reason::FwdEncap,
        Reason::FwdDecap,
        Reason::ArpReply,
        Reason::PassNotOverlay,
        Reason::FwdGateway,
        Reason::FwdResolver,
        Reason::DnsReply,
        Reason::VipEchoReply,
        Reason::FwdMeshIn,
        Reason::FwdMeshOut,
        Reason::PassToTc,
        Reason::Truncated,
        Reason::Vlan,
        Reason::UnsupportedEthertype,
        Reason::SpoofedMac,
        Reason::SpoofedIp,
        Reason::ArpUnanswered,
        Reason::Broadcast,
        Reason::UnknownDestination,
        Reason::NoEndpoint,
        Reason::VxlanFlags,
        Reason::UnknownVni,
        Reason::NotMember,
        Reason::IpOptions,
        Reason::Fragment,
        Reason::VtepMismatch,
        Reason::AdjustFailed,
        Reason::NoConfig,
        Reason::BadIpHeader,
        Reason::RedirectFailed,
        Reason::GatewayOverlay,
        Reason::GatewayInternal,
        Reason::ServiceNoPort,
        Reason::ServiceNoBackend,
        Reason::MeshNoFlow,
        Reason::MeshTooBig,
    ];

    /// The name operators see in `overlay stats`.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::FwdLocal => "fwd-local",
            Reason::FwdEncap => "fwd-encap",
            Reason::FwdDecap => "fwd-decap",
            Reason::ArpReply => "arp-reply",
            Reason::PassNotOverlay => "pass-not-overlay",
            Reason::FwdGateway => "fwd-gateway",
            Reason::FwdResolver => "fwd-resolver",
            Reason::DnsReply => "dns-reply",
            Reason::VipEchoReply => "vip-echo-reply",
            Reason::FwdMeshIn => "fwd-mesh-in",
            Reason::FwdMeshOut => "fwd-mesh-out",
            Reason::PassToTc => "pass-to-tc",
            Reason::Truncated => "drop-truncated",
            Reason::Vlan => "drop-vlan",
            Reason::UnsupportedEthertype => "drop-ethertype",
            Reason::SpoofedMac => "drop-spoofed-mac",
            Reason::SpoofedIp => "drop-spoofed-ip",
            Reason::ArpUnanswered => "drop-arp-unanswered",
            Reason::Broadcast => "drop-broadcast",
            Reason::UnknownDestination => "drop-unknown-dst",
            Reason::NoEndpoint => "drop-no-endpoint",
            Reason::VxlanFlags => "drop-vxlan-flags",
            Reason::UnknownVni => "drop-unknown-vni",
            Reason::NotMember => "drop-not-member",
            Reason::IpOptions => "drop-ip-options",
            Reason::Fragment => "drop-fragment",
            Reason::VtepMismatch => "drop-vtep-mismatch",
            Reason::AdjustFailed => "drop-adjust-failed",
            Reason::NoConfig => "drop-no-config",
            Reason::BadIpHeader => "drop-bad-ip-header",
            Reason::RedirectFailed => "drop-redirect-failed",
            Reason::GatewayOverlay => "drop-gateway-overlay",
            Reason::GatewayInternal => "drop-gateway-internal",
            Reason::ServiceNoPort => "drop-service-no-port",
            Reason::ServiceNoBackend => "drop-service-no-backend",
            Reason::MeshNoFlow => "drop-mesh-no-flow",
            Reason::MeshTooBig => "drop-mesh-too-big",
        }
    }

    /// Whether the code counts a drop (as opposed to a forward or pass).
    pub const fn is_drop(self) -> bool {
        (self as u32) >= 16
    }

    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| *r as u32 == code)
    }
}

package logx

// The log vocabulary: every key of every log line is one of these, so that the logs of all
// components are filtered the same way (docs/LOGGING.md says what each means). The root
// package's TestLogKeys refuses any other key at a slog call, in code tests do not reach
// too; add a key here (and to the doc) only when no existing one fits.
const (
	// Who and where.
	KeyComponent = "component" // the package logging: mesh, sleeve, fastdp, ipam, ...
	KeyLocal     = "local"     // our own peer name (on the daemon's base logger)
	KeyPeer      = "peer"      // the remote peer the line is about
	KeyNickname  = "nickname"  // nickname of that peer (ours next to local)
	KeyUID       = "uid"       // a peer's per-start UID
	KeyConn      = "conn"      // mesh connection id
	KeyOutbound  = "outbound"  // we dialled the connection
	KeyAddr      = "addr"      // underlay address: ip or ip:port
	KeyPort      = "port"      // a port: UDP/TCP number, or an OVS port name
	KeyOverlay   = "overlay"   // sleeve or fastdp
	KeyNetns     = "netns"     // network namespace (name, path or a lab's prefix)
	KeyDevice    = "device"    // network device: TAP, bridge, VXLAN, veth, container interface
	KeyMAC       = "mac"
	KeyContainer = "container" // container / attachment id
	KeyCIDR      = "cidr"      // overlay address(es) or range in CIDR form
	KeyIP        = "ip"        // one overlay address
	KeyPath      = "path"      // a file or directory
	KeyVersion   = "version"   // a software version: package=version, kernel release

	// What happened.
	KeyMTU       = "mtu"       // an Ethernet/link MTU
	KeyPMTU      = "pmtu"      // an underlay path MTU (IP)
	KeyCipher    = "cipher"    // sleeve cipher in use
	KeyEncrypted = "encrypted" // bool
	KeyMode      = "mode"      // how something runs: datapath type, offloads, bench mode
	KeyState     = "state"     // a state name
	KeyReason    = "reason"    // why, in words
	KeyFrom      = "from"      // the previous holder of what moved (a MAC's peer, a range's owner)
	KeyCount     = "count"     // how many of what the message names
	KeyLost      = "lost"      // how many of them were lost
	KeyTotal     = "total"     // out of how many
	KeyDuration  = "duration"  // how long: timeouts, hold-downs, ages
	KeyStats     = "stats"     // a component's counters (with component)
	KeyErr       = "err"

	// Added by Limiter: lines it dropped since the last one through.
	KeySuppressed = "suppressed"
)

package api

import (
	"fmt"
	"time"
)

// Version of the API's paths. A client and a daemon of the same major API version interoperate.
const Version = "v1"

// Paths served by the daemon.
const (
	PathStatus  = "/v1/status"
	PathReport  = "/v1/report"
	PathStop    = "/v1/stop"
	PathReset   = "/v1/reset"
	PathConnect = "/v1/connect"
	PathForget  = "/v1/forget"
	PathVersion = "/v1/version"
)

// Default locations and ports (CONTRACT.md).
const (
	DefaultSocket      = "/run/weave/weave.sock"
	DefaultStateDir    = "/var/lib/weave"
	DefaultPort        = 6783
	DefaultMetricsAddr = "127.0.0.1:6782"
	DefaultBridge      = "weave"
	DefaultTAP         = "vethwe-tap"
	DefaultIPRange     = "10.32.0.0/12"
)

// Report is the whole state of a router (GET /v1/report; `weavectl report`).
type Report struct {
	Version   string     `json:"version"`
	Ready     bool       `json:"ready"`
	Router    Router     `json:"router"`
	IPAM      *IPAM      `json:"ipam,omitempty"`
	Endpoints []Endpoint `json:"endpoints"`
	// Bridge is the local bridge the router serves.
	Bridge Bridge `json:"bridge"`
}

// Router is the mesh part of the report.
type Router struct {
	Name        string       `json:"name"`
	NickName    string       `json:"nickname"`
	UID         uint64       `json:"uid,omitempty"`
	Port        int          `json:"port"`
	Encryption  bool         `json:"encryption"`
	Discovery   bool         `json:"peer_discovery"`
	Peers       []Peer       `json:"peers"`
	Connections []Connection `json:"connections"`
	Targets     []string     `json:"targets"`
	// TrustedSubnets are the networks whose peers exchange data unencrypted.
	TrustedSubnets []string `json:"trusted_subnets,omitempty"`
	// Routes are the unicast routes for data: to reach dest, send to via.
	Routes []Route `json:"unicast_routes"`
	// Members is the failure detector's agreed view of every peer it has seen.
	Members []Member `json:"members,omitempty"`
}

// Route is one unicast route.
type Route struct {
	Dest string `json:"dest"`
	Via  string `json:"via"`
}

// Member is a peer's liveness as the cluster agrees on it (memberlist).
type Member struct {
	Peer  string    `json:"peer"`
	State string    `json:"state"`
	Since time.Time `json:"since"`
}

// Peer is one peer of the mesh as this router sees it.
type Peer struct {
	Name        string           `json:"name"`
	NickName    string           `json:"nickname"`
	UID         uint64           `json:"uid"`
	Version     uint64           `json:"version,omitempty"`
	Connections []PeerConnection `json:"connections"`
	// Liveness is memberlist's agreed view: alive, suspect, dead (empty when unknown).
	Liveness string `json:"liveness,omitempty"`
}

// PeerConnection is a connection as a peer reports it in its topology.
type PeerConnection struct {
	Name        string `json:"name"`
	Address     string `json:"address"`
	Outbound    bool   `json:"outbound"`
	Established bool   `json:"established"`
}

// Connection states shown to users (Weave's words).
const (
	StateEstablished = "established"
	StatePending     = "pending"
	StateConnecting  = "connecting"
	StateRetrying    = "retrying"
	StateFailed      = "failed"
)

// Connection is one of this router's connections or connection attempts.
type Connection struct {
	Peer      string `json:"peer,omitempty"`
	NickName  string `json:"nickname,omitempty"`
	Address   string `json:"address"`
	Outbound  bool   `json:"outbound"`
	State     string `json:"state"`
	Info      string `json:"info,omitempty"`
	Overlay   string `json:"overlay"`
	Encrypted bool   `json:"encrypted"`
	MTU       int    `json:"mtu,omitempty"`
	// NextRetry is set for failed and retrying targets.
	NextRetry *time.Time `json:"next_retry,omitempty"`
}

// IPAM is the allocator part of the report.
type IPAM struct {
	Status          string       `json:"status"`
	Range           string       `json:"range"`
	DefaultSubnet   string       `json:"default_subnet"`
	RangeNumIPs     uint64       `json:"range_num_ips,omitempty"`
	ActiveIPs       int          `json:"active_ips"`
	PendingAllocs   int          `json:"pending_allocates"`
	Entries         []IPAMEntry  `json:"entries"`
	Owners          []IPAMOwner  `json:"owners"`
	UnreachablePeer []string     `json:"unreachable_peers,omitempty"`
	Owned           []Allocation `json:"owned,omitempty"`
	// Error is the last refused ring update, with how to repair it.
	Error     string   `json:"error,omitempty"`
	Conflicts []string `json:"conflicts,omitempty"`
}

// IPAMOwner sums one peer's share of the range (`weavectl status ipam`).
type IPAMOwner struct {
	Peer      string  `json:"peer"`
	NickName  string  `json:"nickname"`
	Addresses uint64  `json:"addresses"`
	Percent   float64 `json:"percent"`
	Reachable bool    `json:"reachable"`
	Self      bool    `json:"self"`
}

// IPAMEntry is one token of the ring: a range owned by a peer.
type IPAMEntry struct {
	Token     string `json:"token"`
	Size      uint64 `json:"size"`
	Free      uint64 `json:"free"`
	Peer      string `json:"peer"`
	NickName  string `json:"nickname"`
	Reachable bool   `json:"reachable"`
	Version   uint32 `json:"version,omitempty"`
}

// Allocation is an address held by a container interface on this peer.
type Allocation struct {
	ID    string   `json:"id"`
	Iface string   `json:"iface,omitempty"`
	CIDRs []string `json:"cidrs"`
}

// Endpoint is an interface attached to the local bridge.
type Endpoint struct {
	ID    string   `json:"id"`
	MAC   string   `json:"mac"`
	CIDRs []string `json:"cidrs"`
}

// Bridge describes the host plumbing.
type Bridge struct {
	Name string `json:"name"`
	TAP  string `json:"tap"`
	MTU  int    `json:"mtu"`
	MAC  string `json:"mac,omitempty"`
}

// Status is the short readiness answer of GET /v1/status.
type Status struct {
	Version string `json:"version"`
	Ready   bool   `json:"ready"`
	Name    string `json:"name"`
	PID     int    `json:"pid"`
	// Waiting says what the router is still waiting for while not ready.
	Waiting string `json:"waiting,omitempty"`
}

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version string `json:"version"`
	API     string `json:"api"`
}

// PeersRequest is the body of connect and forget.
type PeersRequest struct {
	Peers   []string `json:"peers"`
	Replace bool     `json:"replace,omitempty"`
}

// Error codes are stable: clients branch on them and map them to exit statuses.
type ErrorCode int

// The error codes. Append only.
const (
	CodeInternal     ErrorCode = 1
	CodeBadRequest   ErrorCode = 2
	CodeNotFound     ErrorCode = 3
	CodeNotReady     ErrorCode = 4
	CodeConflict     ErrorCode = 5
	CodeUnavailable  ErrorCode = 6
	CodeUnsupported  ErrorCode = 7
	CodeTooManyPeers ErrorCode = 8
	// CodeTooLarge: the request body is over MaxRequestBody.
	CodeTooLarge ErrorCode = 9
)

// MaxRequestBody is the largest request body the daemon reads; the client refuses to send
// a larger one.
const MaxRequestBody = 1 << 20

// Error is the body of every non-2xx answer.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// HTTPStatus maps a code to the HTTP status the server answers with.
func (c ErrorCode) HTTPStatus() int {
	switch c {
	case CodeBadRequest:
		return 400
	case CodeNotFound:
		return 404
	case CodeConflict:
		return 409
	case CodeNotReady, CodeUnavailable:
		return 503
	case CodeUnsupported:
		return 501
	case CodeTooManyPeers:
		return 429
	case CodeTooLarge:
		return 413
	default:
		return 500
	}
}

// More paths (attachments).
const (
	PathAttach    = "/v1/attach"
	PathDetach    = "/v1/detach"
	PathExpose    = "/v1/expose"
	PathHide      = "/v1/hide"
	PathEndpoints = "/v1/endpoints"
	PathRmpeer    = "/v1/rmpeer"
)

// RmpeerRequest names a dead peer (name or nickname) whose IPAM space this peer takes over.
type RmpeerRequest struct {
	Peer string `json:"peer"`
}

// RmpeerResponse says how many addresses were taken over.
type RmpeerResponse struct {
	Peer  string `json:"peer"`
	Taken uint64 `json:"taken"`
}

// ExposeID is the endpoint ID of the host's own address on the bridge (Weave's name).
const ExposeID = "weave:expose"

// AttachRequest attaches a network namespace to the bridge.
type AttachRequest struct {
	// Target is a name from `ip netns list`, a namespace path, or a PID.
	Target string `json:"target"`
	// CIDRs to give the interface; empty: one allocated by IPAM in the default subnet
	// (or the addresses it had, when it is attached already).
	CIDRs []string `json:"cidrs,omitempty"`
	// IfName inside the namespace; empty: ethwe.
	IfName string `json:"ifname,omitempty"`
}

// DetachRequest removes CIDRs (or, with none, the interface) and releases the addresses.
type DetachRequest struct {
	Target string   `json:"target"`
	CIDRs  []string `json:"cidrs,omitempty"`
	IfName string   `json:"ifname,omitempty"`
}

// ExposeRequest gives the host an address on the bridge (none given: IPAM allocates one).
type ExposeRequest struct {
	CIDRs []string `json:"cidrs,omitempty"`
}

// IPAM paths, for clients that do their own plumbing (the CNI plugin).
const (
	PathIPAMAllocate = "/v1/ipam/allocate"
	PathIPAMClaim    = "/v1/ipam/claim"
	PathIPAMRelease  = "/v1/ipam/release"
	PathIPAMList     = "/v1/ipam/allocations"
)

// IPAMRequest names an allocation: one container's interface. Subnet (allocate) is optional;
// CIDR (claim, release of one address) is an address with its prefix length.
type IPAMRequest struct {
	ID     string `json:"id"`
	Iface  string `json:"iface"`
	Subnet string `json:"subnet,omitempty"`
	CIDR   string `json:"cidr,omitempty"`
}

// IPAMResponse answers allocate and claim: the addresses the interface holds.
type IPAMResponse struct {
	CIDRs []string `json:"cidrs,omitempty"`
}

// IPAMReleaseResponse answers release: how many addresses were freed, 0 included (nothing
// held is not an error, but the caller can tell it apart from a release that freed one).
type IPAMReleaseResponse struct {
	Released int `json:"released"`
}

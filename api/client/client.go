// Package client is the Go client of weaver's control API over its unix socket. weavectl and
// the CNI plugin use it; it imports nothing of the daemon.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/weavemesh/weave/api"
)

// ErrNotRunning means no daemon answers on the socket.
var ErrNotRunning = errors.New("weaver is not running")

// Client talks to one daemon.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the daemon listening on socket (api.DefaultSocket when empty).
func New(socket string) *Client {
	if socket == "" {
		socket = api.DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 10 * time.Second,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// NewWithHTTPClient is for tests: requests go to hc, which must route "http://weave/..." to a server.
func NewWithHTTPClient(hc *http.Client) *Client {
	return &Client{socket: "(test)", hc: hc}
}

// Socket returns the socket path the client uses.
func (c *Client) Socket() string { return c.socket }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		if len(b) > api.MaxRequestBody {
			// The daemon would refuse it too; saying so here spares sending megabytes.
			return api.Errorf(api.CodeTooLarge, "%s %s: request body too large: %d bytes, the limit is %d", method, path, len(b), api.MaxRequestBody)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://weave"+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if isNotRunning(err) {
			return fmt.Errorf("%w (no daemon on %s)", ErrNotRunning, c.socket)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e api.Error
		if json.Unmarshal(data, &e) == nil && e.Message != "" {
			return &e
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func isNotRunning(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// call does one request and decodes the answer into a T.
func call[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var out T
	err := c.do(ctx, method, path, in, &out)
	return out, err
}

// Status returns the daemon's readiness. A daemon that is up but not ready answers too.
func (c *Client) Status(ctx context.Context) (api.Status, error) {
	return call[api.Status](ctx, c, http.MethodGet, api.PathStatus, nil)
}

// Report returns the whole state.
func (c *Client) Report(ctx context.Context) (api.Report, error) {
	return call[api.Report](ctx, c, http.MethodGet, api.PathReport, nil)
}

// Version returns the daemon's version.
func (c *Client) Version(ctx context.Context) (api.VersionInfo, error) {
	return call[api.VersionInfo](ctx, c, http.MethodGet, api.PathVersion, nil)
}

// Stop asks the daemon to exit; it answers before it goes.
func (c *Client) Stop(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, api.PathStop, nil, nil)
}

// Connect adds targets (replacing the current ones with replace).
func (c *Client) Connect(ctx context.Context, peers []string, replace bool) error {
	return c.do(ctx, http.MethodPost, api.PathConnect, api.PeersRequest{Peers: peers, Replace: replace}, nil)
}

// Forget removes targets.
func (c *Client) Forget(ctx context.Context, peers []string) error {
	return c.do(ctx, http.MethodPost, api.PathForget, api.PeersRequest{Peers: peers}, nil)
}

// Attach attaches a namespace to the bridge.
func (c *Client) Attach(ctx context.Context, req api.AttachRequest) (api.Endpoint, error) {
	return call[api.Endpoint](ctx, c, http.MethodPost, api.PathAttach, req)
}

// Detach removes addresses or the whole interface of a namespace.
func (c *Client) Detach(ctx context.Context, req api.DetachRequest) (api.Endpoint, error) {
	return call[api.Endpoint](ctx, c, http.MethodPost, api.PathDetach, req)
}

// Expose gives the host addresses on the bridge.
func (c *Client) Expose(ctx context.Context, cidrs []string) (api.Endpoint, error) {
	return call[api.Endpoint](ctx, c, http.MethodPost, api.PathExpose, api.ExposeRequest{CIDRs: cidrs})
}

// Hide removes the host's addresses from the bridge (all of them when cidrs is empty).
func (c *Client) Hide(ctx context.Context, cidrs []string) (api.Endpoint, error) {
	return call[api.Endpoint](ctx, c, http.MethodPost, api.PathHide, api.ExposeRequest{CIDRs: cidrs})
}

// Endpoints lists what is attached to the bridge.
func (c *Client) Endpoints(ctx context.Context) ([]api.Endpoint, error) {
	return call[[]api.Endpoint](ctx, c, http.MethodGet, api.PathEndpoints, nil)
}

// Reset asks the daemon to stop and remove its devices and state.
func (c *Client) Reset(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, api.PathReset, nil, nil)
}

// Rmpeer takes over the IPAM space of a dead peer (name or nickname).
func (c *Client) Rmpeer(ctx context.Context, peer string) (api.RmpeerResponse, error) {
	return call[api.RmpeerResponse](ctx, c, http.MethodPost, api.PathRmpeer, api.RmpeerRequest{Peer: peer})
}

// IPAMAllocate returns the addresses (id, iface) holds, allocating one if it holds none.
func (c *Client) IPAMAllocate(ctx context.Context, req api.IPAMRequest) (api.IPAMResponse, error) {
	return call[api.IPAMResponse](ctx, c, http.MethodPost, api.PathIPAMAllocate, req)
}

// IPAMClaim records that (id, iface) uses req.CIDR.
func (c *Client) IPAMClaim(ctx context.Context, req api.IPAMRequest) (api.IPAMResponse, error) {
	return call[api.IPAMResponse](ctx, c, http.MethodPost, api.PathIPAMClaim, req)
}

// IPAMRelease frees one address (req.CIDR), an interface's, or (no Iface) a container's.
func (c *Client) IPAMRelease(ctx context.Context, req api.IPAMRequest) (api.IPAMReleaseResponse, error) {
	return call[api.IPAMReleaseResponse](ctx, c, http.MethodPost, api.PathIPAMRelease, req)
}

// IPAMAllocations lists every allocation the router holds.
func (c *Client) IPAMAllocations(ctx context.Context) ([]api.Allocation, error) {
	return call[[]api.Allocation](ctx, c, http.MethodGet, api.PathIPAMList, nil)
}

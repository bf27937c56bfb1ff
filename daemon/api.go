package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/weavemesh/weave/api"
	"github.com/weavemesh/weave/internal/logx"
	"github.com/weavemesh/weave/mesh"
)

// apiRefusals counts control API requests refused before or while decoding them, by
// reason (weave_api_refused_total): hostile or buggy clients show up in the metrics.
type apiRefusals struct {
	tooLarge, malformed, unknownField, trailingData, invalid atomic.Uint64
}

func (a *apiRefusals) snapshot() map[string]uint64 {
	return map[string]uint64{
		"too_large": a.tooLarge.Load(), "malformed": a.malformed.Load(), "unknown_field": a.unknownField.Load(),
		"trailing_data": a.trailingData.Load(), "invalid": a.invalid.Load(),
	}
}

func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, d.handleStatus)
	mux.HandleFunc("GET "+api.PathReport, d.handleReport)
	mux.HandleFunc("GET "+api.PathVersion, d.handleVersion)
	mux.HandleFunc("POST "+api.PathStop, d.handleStop)
	mux.HandleFunc("POST "+api.PathReset, d.handleReset)
	mux.HandleFunc("POST "+api.PathConnect, d.handleConnect)
	mux.HandleFunc("POST "+api.PathForget, d.handleForget)
	mux.HandleFunc("POST "+api.PathAttach, endpointHandler(d, d.attach))
	mux.HandleFunc("POST "+api.PathDetach, endpointHandler(d, d.detach))
	mux.HandleFunc("POST "+api.PathExpose, endpointHandler(d, d.expose))
	mux.HandleFunc("POST "+api.PathHide, endpointHandler(d, d.hide))
	mux.HandleFunc("POST "+api.PathRmpeer, endpointHandler(d, func(_ context.Context, req api.RmpeerRequest) (api.RmpeerResponse, error) {
		return d.rmpeer(req)
	}))
	mux.HandleFunc("POST "+api.PathIPAMAllocate, endpointHandler(d, d.ipamAllocate))
	mux.HandleFunc("POST "+api.PathIPAMClaim, endpointHandler(d, d.ipamClaim))
	mux.HandleFunc("POST "+api.PathIPAMRelease, endpointHandler(d, d.ipamRelease))
	mux.HandleFunc("GET "+api.PathIPAMList, func(w http.ResponseWriter, _ *http.Request) {
		list, err := d.ipamList()
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("GET "+api.PathEndpoints, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, d.endpointList())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, api.Errorf(api.CodeNotFound, "no such API path %s %s (API %s)", r.Method, r.URL.Path, api.Version))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		ae = &api.Error{Code: api.CodeInternal, Message: err.Error()}
	}
	writeJSON(w, ae.Code.HTTPStatus(), ae)
}

// decode reads a JSON body strictly: unknown fields and trailing data are refused, so a
// client typo is an error instead of a silently ignored setting. A body over the limit is
// refused as too large, not cut off (which read as a confusing "unexpected EOF").
func (d *Daemon) decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, api.MaxRequestBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// Only whitespace may follow the object, and the whole body counts against the
		// limit: a huge body cannot hide behind a small valid prefix.
		var rest []byte
		if rest, err = io.ReadAll(io.MultiReader(dec.Buffered(), body)); err == nil {
			if len(bytes.TrimSpace(rest)) > 0 {
				d.apiRefused.trailingData.Add(1)
				return api.Errorf(api.CodeBadRequest, "bad request body: trailing data after the JSON object")
			}
			return nil
		}
	}
	var tooLarge *http.MaxBytesError
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		d.apiRefused.tooLarge.Add(1)
		return api.Errorf(api.CodeTooLarge, "request body too large: the limit is %d bytes", tooLarge.Limit)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no typed error for DisallowUnknownFields.
		d.apiRefused.unknownField.Add(1)
		return api.Errorf(api.CodeBadRequest, "bad request body: %s", strings.TrimPrefix(err.Error(), "json: "))
	case errors.Is(err, io.EOF):
		d.apiRefused.malformed.Add(1)
		return api.Errorf(api.CodeBadRequest, "bad request body: empty, want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		d.apiRefused.malformed.Add(1)
		return api.Errorf(api.CodeBadRequest, "bad request body: malformed JSON: the body ends inside the JSON object")
	case errors.As(err, &syntax), errors.As(err, &typ):
		d.apiRefused.malformed.Add(1)
		return api.Errorf(api.CodeBadRequest, "bad request body: malformed JSON: %v", err)
	default:
		d.apiRefused.malformed.Add(1)
		return api.Errorf(api.CodeBadRequest, "bad request body: %v", err)
	}
}

// refusedInvalid counts a request the handler refused as invalid (a decoded body whose
// values are wrong).
func (d *Daemon) refusedInvalid(err error) {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == api.CodeBadRequest {
		d.apiRefused.invalid.Add(1)
	}
}

func (d *Daemon) isReady() bool {
	select {
	case <-d.ready:
		return true
	default:
		return false
	}
}

func (d *Daemon) handleStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.Status{
		Version: d.cfg.Version,
		Ready:   d.isReady(),
		Name:    d.name.String(),
		PID:     os.Getpid(),
	})
}

func (d *Daemon) handleVersion(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.VersionInfo{Version: d.cfg.Version, API: api.Version})
}

func (d *Daemon) handleReport(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, d.report())
}

func (d *Daemon) handleStop(w http.ResponseWriter, _ *http.Request) {
	d.log.Info("stop requested through the API")
	w.WriteHeader(http.StatusNoContent)
	d.requestStop()
}

func (d *Daemon) handleReset(w http.ResponseWriter, _ *http.Request) {
	d.log.Info("reset requested through the API: stopping, then removing devices and state")
	if d.ipam != nil {
		// Our space goes to a live peer first, so the network does not lose it.
		if heir, err := d.ipam.Handover(); err != nil {
			d.log.Warn("could not hand our address space over on reset", logx.KeyErr, err)
		} else if heir != mesh.UnknownPeerName {
			d.log.Info("address space handed over on reset", logx.KeyPeer, heir.String())
		}
	}
	d.resetReq.Store(true)
	w.WriteHeader(http.StatusNoContent)
	d.requestStop()
}

func (d *Daemon) peersRequest(w http.ResponseWriter, r *http.Request) (api.PeersRequest, error) {
	var req api.PeersRequest
	if err := d.decode(w, r, &req); err != nil {
		return req, err
	}
	for _, p := range req.Peers {
		if p == "" || len(p) > 255 || strings.ContainsAny(p, " \t\n/") {
			d.apiRefused.invalid.Add(1)
			return req, api.Errorf(api.CodeBadRequest, "bad peer address %q: want host[:port]", p)
		}
	}
	return req, nil
}

func (d *Daemon) handleConnect(w http.ResponseWriter, r *http.Request) {
	req, err := d.peersRequest(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := d.mesh.Connect(req.Peers, req.Replace); err != nil {
		writeError(w, api.Errorf(api.CodeBadRequest, "connect: %v", err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (d *Daemon) handleForget(w http.ResponseWriter, r *http.Request) {
	req, err := d.peersRequest(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(req.Peers) == 0 {
		writeError(w, api.Errorf(api.CodeBadRequest, "forget: no peers given"))
		return
	}
	if err := d.mesh.Forget(req.Peers); err != nil {
		writeError(w, api.Errorf(api.CodeBadRequest, "forget: %v", fmt.Sprint(err)))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// endpointHandler decodes a request of type T, runs f and answers with the endpoint.
func endpointHandler[T, R any](d *Daemon, f func(context.Context, T) (R, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req T
		if err := d.decode(w, r, &req); err != nil {
			writeError(w, err)
			return
		}
		ep, err := f(r.Context(), req)
		if err != nil {
			d.refusedInvalid(err)
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, ep)
	}
}

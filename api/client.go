package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"

	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

// ErrNoServer means nothing serves the API socket: no VM runs there.
var ErrNoServer = errors.New("no lucos VM on this API socket")

// Client talks to the control API of one VM.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Detach asks the lucos that attached to the VM to detach (POST /detach).
func (c *Client) Detach(ctx context.Context) (*DetachReply, error) {
	var r DetachReply
	return &r, c.do(ctx, http.MethodPost, "/detach", struct{}{}, &r)
}

// VM returns GET /vm.
func (c *Client) VM(ctx context.Context) (*VMInfo, error) {
	var info VMInfo
	return &info, c.do(ctx, http.MethodGet, "/vm", nil, &info)
}

// Exec runs a command in the guest (POST /exec).
func (c *Client) Exec(ctx context.Context, req ExecRequest) (*vmm.ExecResult, error) {
	var res vmm.ExecResult
	return &res, c.do(ctx, http.MethodPost, "/exec", req, &res)
}

// Tasks returns GET /tasks: every task with its top kernel frames.
func (c *Client) Tasks(ctx context.Context) (*TasksReply, error) {
	var r TasksReply
	return &r, c.do(ctx, http.MethodGet, "/tasks", nil, &r)
}

// Sym looks up a symbol by name (with sympos pos, 0 = unique) or an
// address ("0xffffffff81234567").
func (c *Client) Sym(ctx context.Context, q string, pos int) (*SymbolReply, error) {
	var r SymbolReply
	return &r, c.do(ctx, http.MethodGet, "/sym?"+url.Values{"q": {q}, "pos": {strconv.Itoa(pos)}}.Encode(), nil, &r)
}

// Apply applies a patch module (POST /patches).
func (c *Client) Apply(ctx context.Context, req ApplyRequest) (*patch.Info, error) {
	var in patch.Info
	return &in, c.do(ctx, http.MethodPost, "/patches", req, &in)
}

// Patches lists the VM's patches (GET /patches).
func (c *Client) Patches(ctx context.Context) ([]patch.Info, error) {
	var list []patch.Info
	return list, c.do(ctx, http.MethodGet, "/patches", nil, &list)
}

// Rollback rolls a patch back (POST /patches/{id}/rollback).
func (c *Client) Rollback(ctx context.Context, id string, req RollbackRequest) (*patch.Info, error) {
	var in patch.Info
	return &in, c.do(ctx, http.MethodPost, "/patches/"+url.PathEscape(id)+"/rollback", req, &in)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://lucos"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if _, serr := os.Stat(c.path); serr != nil {
			return fmt.Errorf("%w: %s does not exist", ErrNoServer, c.path)
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return fmt.Errorf("%w: %s: %v", ErrNoServer, c.path, op.Err)
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorBody
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s", method, path, e.Error)
		}
		return fmt.Errorf("%s %s: HTTP %s", method, path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

package pipeline

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/netutil"
	"golang.org/x/sync/semaphore"
)

// What a caller's traceparent becomes (tracing.caller_context).
const (
	CallerContextLink   = "link"
	CallerContextParent = "parent"
)

// listen opens one listener: the injected one (Options.Listeners) or a
// new socket, capped at server.max_connections and wrapped in TLS when
// configured.
func (p *Pipeline) listen(what, addr string, files *tlsFiles) (net.Listener, error) {
	ln := p.opts.Listeners[what]
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("%s listener: %w", what, err)
		}
	}
	if n := p.cfg.Server.MaxConnections; n > 0 {
		ln = netutil.LimitListener(ln, n)
	}
	if files != nil {
		// Each handshake takes the newest certificate, so a reload
		// reaches new connections without restarting the listener.
		ln = tls.NewListener(ln, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return files.current(), nil
		}})
	}
	return ln, nil
}

// httpServer is the http.Server for one listener.
func (p *Pipeline) httpServer(h http.Handler) *http.Server {
	s := p.cfg.Server
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: s.ReadTimeout,
		MaxHeaderBytes: s.MaxHeaderBytes, IdleTimeout: 2 * time.Minute}
}

// Reload reads again what may change without a restart: the TLS
// certificates and client CAs, and admin.token_file. The daemon calls it
// on SIGHUP. A file that fails to load keeps what it held before in use.
func (p *Pipeline) Reload() error {
	var errs []error
	if err := p.reloadAdminToken(); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []*tlsFiles{p.tls.server, p.tls.admin} {
		if f == nil {
			continue
		}
		if err := f.load(); err != nil {
			errs = append(errs, err)
			continue
		}
		p.log.Info("TLS certificate reloaded", "listener", f.what, "cert_file", f.cert)
	}
	if err := errors.Join(errs...); err != nil {
		p.log.Error("reload failed; what failed to load stays as it was", "err", err)
		return err
	}
	return nil
}

// tlsFiles is one listener's TLS config, read from its files.
type tlsFiles struct {
	what, cert, key, ca string
	auth                tls.ClientAuthType
	cur                 atomic.Pointer[tls.Config]
}

// newTLSFiles reads c's files, relative to dir; nil when c has none.
func newTLSFiles(what string, c TLSConfig, dir string) (*tlsFiles, error) {
	if c.CertFile == "" {
		return nil, nil
	}
	auth, err := clientAuthType(c.ClientAuthType)
	if err != nil {
		return nil, fmt.Errorf("%s.tls.client_auth_type: %w", what, err)
	}
	f := &tlsFiles{what: what, cert: configPath(dir, c.CertFile), key: configPath(dir, c.KeyFile), ca: configPath(dir, c.ClientCAFile), auth: auth}
	return f, f.load()
}

func (f *tlsFiles) load() error {
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return fmt.Errorf("%s.tls: %w", f.what, err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"}, ClientAuth: f.auth}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return fmt.Errorf("%s.tls.client_ca_file: %w", f.what, err)
		}
		c.ClientCAs = x509.NewCertPool()
		if !c.ClientCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s.tls.client_ca_file: %s holds no PEM certificate", f.what, f.ca)
		}
	}
	f.cur.Store(c)
	return nil
}

func (f *tlsFiles) current() *tls.Config { return f.cur.Load() }

func clientAuthType(s string) (tls.ClientAuthType, error) {
	if s == "" {
		return tls.NoClientCert, nil
	}
	// The names are crypto/tls's own, as its String method spells them.
	known := []tls.ClientAuthType{tls.NoClientCert, tls.RequestClientCert, tls.RequireAnyClientCert,
		tls.VerifyClientCertIfGiven, tls.RequireAndVerifyClientCert}
	for _, a := range known {
		if a.String() == s {
			return a, nil
		}
	}
	return 0, fmt.Errorf("unknown %q (want NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)", s)
}

// parsePrefix reads a trusted proxy: an IP or a CIDR.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return pf, fmt.Errorf("%q is not an IP address or CIDR", s)
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// clients tells who sent a request.
type clients struct{ trusted []netip.Prefix }

// addr is the client's address: the peer, or, when the peer is a trusted
// proxy, the nearest address in X-Forwarded-For that is not one. Only
// proxies append honestly, so the chain is read from the right.
func (c clients) addr(r *http.Request) netip.Addr {
	peer := addrOf(r.RemoteAddr)
	if !c.isTrusted(peer) {
		return peer
	}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	client := peer
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break // garbage from beyond the proxies: trust no further
		}
		client = a.Unmap()
		if !c.isTrusted(client) {
			break
		}
	}
	return client
}

// shareKey is whose share of the unverified budget a client address
// draws on: the address itself for IPv4, its /64 for IPv6, since one
// host usually holds a whole /64 and could rotate through it.
func shareKey(a netip.Addr) netip.Addr {
	if a.Is6() && !a.Is4In6() {
		if pf, err := a.Prefix(64); err == nil {
			return pf.Addr()
		}
	}
	return a
}

func (c clients) isTrusted(a netip.Addr) bool {
	for _, pf := range c.trusted {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

func addrOf(remote string) netip.Addr {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		a, _ := netip.ParseAddr(remote)
		return a.Unmap()
	}
	return ap.Addr().Unmap()
}

// bodyBudget bounds the memory of bodies being read and checked. Callers
// proven by their headers draw from one pool; everyone else from another,
// and each client address from only a share of it, so that strangers can
// neither starve the proven callers nor one stranger the others.
type bodyBudget struct {
	verified, unverified *semaphore.Weighted
	perClient            int64

	mu   sync.Mutex
	held map[netip.Addr]int64 // unverified bytes per client; no zero entries

	// inflight is what each pool has handed out, for the
	// labelpipe.webhook.body.inflight gauge.
	inflight struct{ verified, unverified atomic.Int64 }
}

func newBodyBudget(s ServerConfig) *bodyBudget {
	verified := s.MaxInflightBytes
	if verified == 0 {
		verified = 4 * s.MaxBodyBytes
	}
	unverified := s.Unverified.MaxInflightBytes
	if unverified == 0 {
		unverified = verified
	}
	perClient := s.Unverified.PerClientBytes
	if perClient == 0 {
		perClient = s.MaxBodyBytes
	}
	return &bodyBudget{verified: semaphore.NewWeighted(verified), unverified: semaphore.NewWeighted(unverified),
		perClient: perClient, held: map[netip.Addr]int64{}}
}

// Why a body's reservation failed.
var (
	errBudgetBusy     = errors.New("labelpipe is busy reading other large exports (server.max_inflight_bytes); it was not accepted, retry shortly")
	errClientShare    = errors.New("too many bodies from this address are being read at once (server.unverified.per_client_bytes); it was not accepted, retry shortly")
	errUnverifiedBusy = errors.New("labelpipe is busy reading other unverified bodies (server.unverified.max_inflight_bytes); it was not accepted, retry shortly")
)

// reserve takes n bytes, waiting up to wait for room in the pool; a
// client over its share fails at once, since waiting would hold its
// connection open for nothing.
func (b *bodyBudget) reserve(ctx context.Context, n int64, wait time.Duration, verified bool, client netip.Addr) (release func(), err error) {
	pool, busy, gauge := b.verified, errBudgetBusy, &b.inflight.verified
	if !verified {
		client = shareKey(client)
		pool, busy, gauge = b.unverified, errUnverifiedBusy, &b.inflight.unverified
		b.mu.Lock()
		if b.held[client]+n > b.perClient {
			b.mu.Unlock()
			return nil, errClientShare
		}
		b.held[client] += n
		b.mu.Unlock()
	}
	giveBack := func() {
		if verified {
			return
		}
		b.mu.Lock()
		if b.held[client] -= n; b.held[client] == 0 {
			delete(b.held, client)
		}
		b.mu.Unlock()
	}
	if !pool.TryAcquire(n) {
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		if err := pool.Acquire(wctx, n); err != nil {
			giveBack()
			return nil, busy
		}
	}
	gauge.Add(n)
	return func() { gauge.Add(-n); pool.Release(n); giveBack() }, nil
}

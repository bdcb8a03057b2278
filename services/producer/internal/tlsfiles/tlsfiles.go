// Package tlsfiles serves TLS from certificate files that may be replaced while the
// process runs (cert-manager, a Kubernetes Secret update, a cron job renewing a key), so a
// rotated certificate or client CA takes effect without a restart.
package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultCheckInterval is how often, at most, the files are read again to look for a
// rotation: a new certificate is served within this long of being written.
const DefaultCheckInterval = 5 * time.Second

// Files names the PEM files to serve.
type Files struct {
	CertFile string // server certificate chain
	KeyFile  string // its private key
	// ClientCAFile, when set, turns on mutual TLS: every client must present a
	// certificate issued by one of these CAs.
	ClientCAFile string
}

// Reloader hands out the TLS configuration for each new connection from the latest good
// content of its files.
//
// It rereads the files at most every CheckInterval, from the handshake of a new
// connection (so an idle server does no I/O), and compares their bytes with what it last
// tried. Files that changed but do not load (a key that no longer matches a half-written
// certificate, a truncated file) are logged once and the previous configuration stays in
// service; the next change is tried again. Established connections keep the certificate
// they were made with.
type Reloader struct {
	files    Files
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu        sync.Mutex
	current   *tls.Config
	attempted [3][]byte // file contents last tried, good or bad
	checked   time.Time
}

// New loads files and returns a Reloader serving them, checking for rotations at most
// every interval (0 means DefaultCheckInterval). Files that do not load now are an error:
// a server must not start without a usable certificate.
func New(files Files, interval time.Duration, log *slog.Logger) (*Reloader, error) {
	if interval <= 0 {
		interval = DefaultCheckInterval
	}
	r := &Reloader{files: files, log: log, interval: interval, now: time.Now}
	contents, err := r.read()
	if err != nil {
		return nil, err
	}
	cfg, err := r.build(contents)
	if err != nil {
		return nil, err
	}
	r.current, r.attempted, r.checked = cfg, contents, r.now()
	return r, nil
}

// ServerConfig returns the tls.Config to serve with (e.g. through grpc's
// credentials.NewTLS): every handshake gets the latest loaded configuration.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return r.config(), nil
		},
	}
}

// Leaf returns the certificate being served.
func (r *Reloader) Leaf() *x509.Certificate {
	return r.config().Certificates[0].Leaf
}

// config returns the current configuration, first reloading the files if they are due for
// a check and have changed. The returned config is shared and must not be modified.
func (r *Reloader) config() *tls.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) < r.interval {
		return r.current
	}
	r.checked = now
	contents, err := r.read()
	if err != nil {
		// A file briefly missing mid-rotation (a symlink swap) is normal: keep serving
		// and look again at the next check.
		r.log.Warn("TLS files unreadable; serving the previous certificate", "err", err)
		return r.current
	}
	if sameContents(contents, r.attempted) {
		return r.current
	}
	r.attempted = contents
	cfg, err := r.build(contents)
	if err != nil {
		r.log.Warn("TLS files changed but do not load; serving the previous certificate until they are fixed", "err", err)
		return r.current
	}
	r.current = cfg
	r.log.Info("TLS certificate reloaded", "subject", cfg.Certificates[0].Leaf.Subject.String(),
		"not_after", cfg.Certificates[0].Leaf.NotAfter, "client_ca", r.files.ClientCAFile != "")
	return r.current
}

func (r *Reloader) read() ([3][]byte, error) {
	var contents [3][]byte
	var errs []error
	for i, name := range []string{r.files.CertFile, r.files.KeyFile, r.files.ClientCAFile} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			errs = append(errs, err)
		}
		contents[i] = b
	}
	return contents, errors.Join(errs...)
}

func (r *Reloader) build(contents [3][]byte) (*tls.Config, error) {
	pair, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return nil, fmt.Errorf("%s and %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if r.files.ClientCAFile != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(contents[2]) {
			return nil, fmt.Errorf("%s: no PEM certificate found", r.files.ClientCAFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

func sameContents(a, b [3][]byte) bool {
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

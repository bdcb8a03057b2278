package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// What every image holds besides its binary. The user is distroless's "nonroot", so that
// manifests written for distroless images (runAsUser: 65532) fit ours too.
const (
	binDir = "/usr/local/bin"
	caFile = "/etc/ssl/certs/ca-certificates.crt" // where Go's crypto/x509 looks first on Linux
	uid    = 65532
	user   = "65532:65532"
)

// OCI annotation and label keys.
const (
	labelSource   = "org.opencontainers.image.source"
	labelRevision = "org.opencontainers.image.revision"
	labelVersion  = "org.opencontainers.image.version"
	labelTitle    = "org.opencontainers.image.title"
	labelCreated  = "org.opencontainers.image.created"
	refName       = "org.opencontainers.image.ref.name"
)

// exposedPorts are the ports each service listens on by default (its config.go's default
// addresses: METRICS_ADDR, the producer's GRPC_ADDR, the emulator's FCM_EMULATOR_ADDR), the
// containerPorts of deployments/k8s. The image config declares them, as documentation and
// for `docker run -P`; in a container the services must still be told to listen beyond
// loopback (METRICS_ADDR=:9101 …). A service not listed listens on nothing (notifyctl).
var exposedPorts = map[string][]string{
	"producer":     {"50051/tcp", "9101/tcp"},
	"sender":       {"9102/tcp"},
	"retrier":      {"9103/tcp"},
	"deadletter":   {"9104/tcp"},
	"fcm-emulator": {"9099/tcp"},
}

// build describes the images of one `make images` run.
type build struct {
	Root    string    // the repository: go.work and services/<name>
	Version string    // image tag and org.opencontainers.image.version
	Commit  string    // org.opencontainers.image.revision
	Source  string    // org.opencontainers.image.source; omitted when empty
	Created time.Time // image creation time and every file's mtime: the commit's time keeps builds reproducible
	Arch    string    // GOARCH of the binaries and the image platform
}

// binary builds services/<service> as a static linux binary at out, from the go.work
// workspace: the same module versions `go test work` uses, which building one module alone
// (GOWORK=off) would not give.
func (b build) binary(ctx context.Context, service, out string) error {
	ldflags := "-s -w -X notify/pkg/buildinfo.version=" + b.Version + " -X notify/pkg/buildinfo.commit=" + b.Commit
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, "./services/"+service)
	cmd.Dir = b.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+b.Arch, "GOWORK="+filepath.Join(b.Root, "go.work"))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", service, err, out)
	}
	return nil
}

// image assembles the image of service around the binary at bin: one layer with the
// binary, the CA bundle, /etc/passwd and /etc/group for the non-root user, a home and /tmp.
func (b build) image(service, bin string) (v1.Image, error) {
	exe, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	certs, err := caBundle()
	if err != nil {
		return nil, err
	}
	layerTar, err := b.rootfs(service, exe, certs)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", b.Arch
	cf.Created = v1.Time{Time: b.Created}
	labels := map[string]string{
		labelTitle:    "notify " + service,
		labelVersion:  b.Version,
		labelRevision: b.Commit,
		labelCreated:  b.Created.Format(time.RFC3339),
	}
	if b.Source != "" {
		labels[labelSource] = b.Source
	}
	cf.Config = v1.Config{
		User:       user,
		Entrypoint: []string{path.Join(binDir, service)},
		Env:        []string{"PATH=" + binDir},
		WorkingDir: "/home/nonroot",
		Labels:     labels,
	}
	if ports := exposedPorts[service]; len(ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	cf.History = []v1.History{{Created: cf.Created, CreatedBy: "make images (deployments/images)", Comment: service + " " + b.Version}}
	return mutate.ConfigFile(img, cf)
}

// caBundle returns the PEM bundle of the roots that golang.org/x/crypto/x509roots/fallback
// embeds (Mozilla's NSS trust store), pinned in go.mod like any other dependency. Roots
// that NSS trusts only with extra constraints (say, distrusted after a date) are left out:
// a PEM file cannot carry the constraint, and trusting them without it would be wider than
// NSS trusts them.
func caBundle() ([]byte, error) {
	var buf bytes.Buffer
	for root := range bundle.Roots() {
		if root.Constraint != nil {
			continue
		}
		cert, err := x509.ParseCertificate(root.Certificate)
		if err != nil {
			return nil, fmt.Errorf("CA bundle: %w", err)
		}
		fmt.Fprintf(&buf, "# %s\n", cert.Subject)
		if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: root.Certificate}); err != nil {
			return nil, err
		}
	}
	if buf.Len() == 0 {
		return nil, errors.New("CA bundle: no roots")
	}
	return buf.Bytes(), nil
}

// rootfs returns the layer's tar: entries sorted, owned by root except the user's home,
// every mtime the build's, so the same inputs give the same digest.
func (b build) rootfs(service string, exe, certs []byte) ([]byte, error) {
	entries := map[string]fsEntry{
		"etc/":                     dir(0o755, 0),
		"etc/ssl/":                 dir(0o755, 0),
		"etc/ssl/certs/":           dir(0o755, 0),
		"home/":                    dir(0o755, 0),
		"home/nonroot/":            dir(0o700, uid),
		"tmp/":                     dir(0o1777, 0),
		"usr/":                     dir(0o755, 0),
		"usr/local/":               dir(0o755, 0),
		"usr/local/bin/":           dir(0o755, 0),
		"etc/passwd":               file(0o644, []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:"+strconv.Itoa(uid)+":"+strconv.Itoa(uid)+":nonroot:/home/nonroot:/sbin/nologin\n")),
		"etc/group":                file(0o644, []byte("root:x:0:\nnonroot:x:"+strconv.Itoa(uid)+":\n")),
		caFile[1:]:                 file(0o644, certs),
		binDir[1:] + "/" + service: file(0o755, exe),
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		h := &tar.Header{Name: n, Mode: e.mode, Uid: e.uid, Gid: e.uid, ModTime: b.Created, Format: tar.FormatPAX}
		if e.isDir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// fsEntry is one file or directory of an image's root filesystem.
type fsEntry struct {
	mode  int64
	uid   int
	data  []byte
	isDir bool
}

func dir(mode int64, owner int) fsEntry { return fsEntry{mode: mode, uid: owner, isDir: true} }

func file(mode int64, data []byte) fsEntry { return fsEntry{mode: mode, data: data} }

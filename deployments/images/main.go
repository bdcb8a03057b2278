// Command images builds notify's container images without a container engine: each holds
// one static binary built from the go.work workspace, a CA bundle, a non-root user and
// nothing else. `make images` runs it; see README.md.
//
//	images -out tmp/images -version v1.2.3 -commit abc123 producer sender ...
//
// For each service it writes an OCI image layout (<out>/<service>.oci, tagged with the
// version and "latest") and a tarball `docker load` takes (<out>/<service>.tar, as
// notify/<service>:<version> and notify/<service>:latest).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// repository is every image's name without its tag: notify/<service>.
const repository = "notify/"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("images", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: images [flags] SERVICE...\n\nBuilds notify/SERVICE images (OCI layout and docker-loadable tarball) without a container engine.\n\nFlags:")
		fs.PrintDefaults()
	}
	out := fs.String("out", "tmp/images", "directory for the image layouts and tarballs")
	root := fs.String("root", ".", "the repository (holding go.work)")
	version := fs.String("version", "dev", "image tag and version label")
	commit := fs.String("commit", "", "revision label (the git commit)")
	source := fs.String("source", "", "source label (the repository's URL); omitted when empty")
	created := fs.String("created", "", "creation time, RFC 3339 (the commit's time keeps builds reproducible); default: the Unix epoch")
	arch := fs.String("arch", runtime.GOARCH, "GOARCH of the binaries and the images")
	if err := fs.Parse(args); err != nil {
		return err
	}
	services := fs.Args()
	if len(services) == 0 {
		fs.Usage()
		return errors.New("no service named")
	}
	b := build{Version: *version, Commit: *commit, Source: *source, Arch: *arch, Created: time.Unix(0, 0).UTC()}
	var err error
	var errs []error
	if b.Root, err = filepath.Abs(*root); err != nil {
		errs = append(errs, fmt.Errorf("-root: %w", err))
	} else if _, err := os.Stat(filepath.Join(b.Root, "go.work")); err != nil {
		errs = append(errs, fmt.Errorf("-root: %w", err))
	}
	if *created != "" {
		if b.Created, err = time.Parse(time.RFC3339, *created); err != nil {
			errs = append(errs, fmt.Errorf("-created: %w", err))
		}
		b.Created = b.Created.UTC()
	}
	if _, err := name.NewTag(repository + "x:" + b.Version); err != nil {
		errs = append(errs, fmt.Errorf("-version %q is not a valid image tag: %w", b.Version, err))
	}
	for _, s := range services {
		if _, err := os.Stat(filepath.Join(b.Root, "services", s, "main.go")); err != nil {
			errs = append(errs, fmt.Errorf("service %q: no services/%s/main.go", s, s))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	binDir, err := os.MkdirTemp("", "notify-images-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(binDir) }() // a temporary directory: nothing to do if it stays

	for _, s := range services {
		bin := filepath.Join(binDir, s)
		if err := b.binary(ctx, s, bin); err != nil {
			return err
		}
		img, err := b.image(s, bin)
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		if err := b.write(img, s, *out); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s%s:%s %s (%s, %s)\n", repository, s, b.Version, digest,
			filepath.Join(*out, s+".oci"), filepath.Join(*out, s+".tar"))
	}
	return nil
}

// write stores img as <out>/<service>.oci (an OCI image layout whose manifests are named
// by tag: the version and "latest") and <out>/<service>.tar (a `docker load` tarball
// tagged notify/<service>:<version> and :latest). Both are replaced, not added to.
func (b build) write(img v1.Image, service, out string) error {
	tags := []string{b.Version}
	if b.Version != "latest" {
		tags = append(tags, "latest")
	}
	dir := filepath.Join(out, service+".oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("OCI layout: %w", err)
	}
	refs := map[name.Reference]v1.Image{}
	for _, tag := range tags {
		if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refName: tag})); err != nil {
			return fmt.Errorf("OCI layout: %w", err)
		}
		ref, err := name.NewTag(repository + service + ":" + tag)
		if err != nil {
			return err
		}
		refs[ref] = img
	}
	tmp := filepath.Join(out, "."+service+".tar")
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		return fmt.Errorf("tarball: %w", err)
	}
	return os.Rename(tmp, filepath.Join(out, service+".tar"))
}

// Package cli is the command line every notify server binary shares: run alone it serves
// (configured by environment variables only); --version and --help answer and exit; a
// binary's own subcommands (the producer's `keys`) are a table; anything else is refused
// with the usage and exit code 2, so a typo never starts a server.
package cli

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"notify/pkg/buildinfo"
	"notify/pkg/logging"
	"notify/pkg/tracing"
)

// Exit codes of Main.
const (
	ExitOK      = 0
	ExitFailure = 1 // the server stopped with an error
	ExitUsage   = 2 // unknown flag, command or argument
)

// Command is a subcommand: `NAME args…`.
type Command struct {
	Name    string // e.g. "keys"
	Args    string // how its arguments look in the usage, e.g. "create|list|revoke ..."
	Summary string // one line
	// Run runs the command with the arguments after its name and returns the exit code.
	Run func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

// Program describes one binary.
type Program struct {
	Name    string // e.g. "sender"
	Summary string // what it does, one sentence
	// Serve runs the server until ctx ends; it is what the binary does with no arguments.
	Serve func(ctx context.Context) error
	// Env lists the environment variables Serve reads (envconfig.Names), for --help.
	Env      []string
	Commands []Command
	// Traced: Serve runs with OpenTelemetry tracing set up by the OTEL_* variables
	// (pkg/tracing, off unless OTEL_TRACES_EXPORTER=otlp) under service.name Name, flushed
	// when Serve returns; --help lists those variables too.
	Traced bool
	// HealthVar names the variable holding the address whose /readyz `healthcheck` asks
	// (METRICS_ADDR when empty) and HealthDefault is the service's default for it, so that
	// with neither the argument nor the variable the check finds the service where it
	// listens by default.
	HealthVar, HealthDefault string
}

// Main runs the program with args (os.Args[1:]) and returns its exit code.
func (p Program) Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(p.Name, flag.ContinueOnError)
	version := fs.Bool("version", false, "")
	if code, done := p.parseFlags(fs, args, stdout, stderr, ""); done {
		return code
	}
	switch {
	case *version && fs.NArg() > 0:
		return p.refuse(stderr, "--version takes no arguments")
	case *version:
		fmt.Fprintf(stdout, "%s %s\n", p.Name, buildinfo.Read())
		return ExitOK
	case fs.NArg() == 0:
		if err := p.serve(ctx); err != nil {
			// A config error lists every bad variable, one per line: keep them one per
			// JSON array element rather than \n escapes in one string.
			var msg any = err.Error()
			if lines := strings.Split(err.Error(), "\n"); len(lines) > 1 {
				msg = lines
			}
			// The same JSON as every other line the service logged (pkg/logging).
			logging.New(stderr, p.Name, slog.LevelInfo).Error(p.Name+" stopped", "err", msg)
			return ExitFailure
		}
		return ExitOK
	case fs.Arg(0) == "help":
		p.usage(stdout)
		return ExitOK
	}
	for _, c := range p.Commands {
		if c.Name == fs.Arg(0) {
			return c.Run(ctx, fs.Args()[1:], stdout, stderr)
		}
	}
	if fs.Arg(0) == "healthcheck" {
		return p.healthcheck(ctx, fs.Args()[1:], stdout, stderr)
	}
	return p.refuse(stderr, "unknown command %q", fs.Arg(0))
}

// serve runs Serve, inside tracing when the program is traced.
func (p Program) serve(ctx context.Context) error {
	if !p.Traced {
		return p.Serve(ctx)
	}
	shutdown, err := tracing.Setup(ctx, p.Name, logging.New(os.Stderr, p.Name, slog.LevelInfo), os.Getenv)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	err = p.Serve(ctx)
	// ctx has ended by now: give the exporter its own few seconds to send what it buffered.
	flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if ferr := shutdown(flush); ferr != nil && err == nil {
		logging.New(os.Stderr, p.Name, slog.LevelInfo).Warn("tracing: spans not flushed", "err", ferr.Error())
	}
	return err
}

// ParseFlags parses args with fs as fs.Parse does, but prints nothing (the caller prints its
// usage, on stdout for help and on stderr for a mistake): -h, -help and --help return
// flag.ErrHelp, and an unknown flag is named as it was typed ("unknown flag: --hepl",
// where the flag package says "flag provided but not defined: -hepl").
func ParseFlags(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	name, unknown := strings.CutPrefix(fmt.Sprint(err), "flag provided but not defined: -")
	if !unknown {
		return err
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		typed, _, _ := strings.Cut(a, "=")
		if strings.TrimLeft(typed, "-") == name && strings.HasPrefix(typed, "-") {
			return UnknownFlagError{Typed: typed}
		}
	}
	return UnknownFlagError{Typed: "-" + name}
}

// UnknownFlagError is a flag the command does not have, as it was typed (--hepl).
type UnknownFlagError struct{ Typed string }

func (e UnknownFlagError) Error() string { return "unknown flag: " + e.Typed }

// parseFlags parses args with fs (ParseFlags). Help prints the usage on stdout, ExitOK; any
// other error is a usage error, prefixed with prefix, on stderr. done says that the caller
// is to return code.
func (p Program) parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, prefix string) (code int, done bool) {
	err := ParseFlags(fs, args)
	var unknown UnknownFlagError
	switch {
	case errors.Is(err, flag.ErrHelp):
		p.usage(stdout)
		return ExitOK, true
	case errors.As(err, &unknown) && slices.Contains(p.env(), p.variableOf(unknown.Typed)):
		// --database-url: someone used to flags.
		return p.refuse(stderr, "%s%v: %s takes its settings from the environment: %s=…", prefix, err, p.Name, p.variableOf(unknown.Typed)), true
	case err != nil:
		return p.refuse(stderr, "%s%v", prefix, err), true
	}
	return ExitOK, false
}

// variableOf is the environment variable a flag's name would be (--metrics-addr: METRICS_ADDR).
func (p Program) variableOf(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(strings.TrimLeft(flag, "-"), "-", "_"))
}

// env is every variable the program reads, for its usage.
func (p Program) env() []string {
	if p.Traced {
		return append(slices.Clip(p.Env), tracing.Env...)
	}
	return p.Env
}

// healthcheck asks a running instance of the service whether it is ready (GET /readyz on
// its METRICS_ADDR) and exits 0 when it answers 200, 1 otherwise. The images hold nothing
// but the binary, so this is how a container runtime (compose's healthcheck) probes them.
// What it says names the URL it asked, not a service: whatever listens there answered,
// which need not be this program's service (`producer healthcheck` at the retrier's port
// said "producer: ready").
func (p Program) healthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// It takes no flags, but `healthcheck --help` is help, and a flag is not an address.
	fs := flag.NewFlagSet(p.Name+" healthcheck", flag.ContinueOnError)
	if code, done := p.parseFlags(fs, args, stdout, stderr, "healthcheck: "); done {
		return code
	}
	args = fs.Args()
	if len(args) == 1 && args[0] == "help" {
		p.usage(stdout) // "help" is no HOST:PORT
		return ExitOK
	}
	if len(args) > 1 {
		return p.refuse(stderr, "healthcheck takes at most one argument, HOST:PORT")
	}
	addr, from := cmp.Or(os.Getenv(p.healthVar()), p.HealthDefault), p.healthVar()
	if len(args) == 1 {
		addr, from = args[0], "the argument"
	}
	if addr == "" {
		return p.refuse(stderr, "healthcheck: %s is not set; give the address: %s healthcheck HOST:PORT", p.healthVar(), p.Name)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return p.refuse(stderr, "healthcheck: %s %q: %v", from, addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1" // listening on every interface: ask over loopback
	}
	target := "http://" + net.JoinHostPort(host, port) + "/readyz"
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return p.refuse(stderr, "healthcheck: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// *url.Error says `Get "URL": …`; the line names the URL already.
		if uerr := (*url.Error)(nil); errors.As(err, &uerr) {
			err = uerr.Err
		}
		fmt.Fprintf(stderr, "not ready: %s: %v\n", target, err)
		return ExitFailure
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "not ready: %s answered %s:\n%s", target, resp.Status, body)
		return ExitFailure
	}
	fmt.Fprintf(stdout, "ready: %s\n", target)
	return ExitOK
}

func (p Program) healthVar() string { return cmp.Or(p.HealthVar, "METRICS_ADDR") }

func (p Program) refuse(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "%s: %s\n\n", p.Name, fmt.Sprintf(format, args...))
	p.usage(stderr)
	return ExitUsage
}

func (p Program) usage(w io.Writer) {
	fmt.Fprintf(w, "%s: %s\n\nUsage:\n", p.Name, p.Summary)
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintf(tw, "  %s\tserve until SIGTERM or SIGINT, configured by environment variables\n", p.Name)
	for _, c := range p.Commands {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimSpace(p.Name+" "+c.Name+" "+c.Args), c.Summary)
	}
	fmt.Fprintf(tw, "  %s healthcheck [HOST:PORT]\texit 0 if the service running at %s (or HOST:PORT) answers /readyz with 200\n", p.Name, p.healthVar())
	fmt.Fprintf(tw, "  %s --version\tprint the version and exit\n", p.Name)
	fmt.Fprintf(tw, "  %s --help\tprint this help and exit\n", p.Name)
	_ = tw.Flush()
	if env := p.env(); len(env) > 0 {
		fmt.Fprintf(w, "\nEnvironment (defaults and meanings: README.md, section Configuration):\n%s\n", Wrap(env, 88, "  "))
	}
}

// Wrap joins words with spaces into lines of at most width characters, each indented.
func Wrap(words []string, width int, indent string) string {
	var b strings.Builder
	line := indent
	for _, w := range words {
		if len(line) > len(indent) && len(line)+1+len(w) > width {
			b.WriteString(line + "\n")
			line = indent
		}
		if len(line) > len(indent) {
			line += " "
		}
		line += w
	}
	b.WriteString(line)
	return b.String()
}

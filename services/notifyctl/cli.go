package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"notify/pkg/buildinfo"
)

// Exit codes scripts can rely on (also in every command's help).
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 2
	exitNotFound = 3
	exitAuth     = 4
	// exitInterrupted is a shell's code for a command stopped by SIGINT (128 + 2).
	exitInterrupted = 130
)

const exitCodesHelp = `Exit codes:
  0  success (replay: every id was replayed or skipped for a reason shown in its result)
  1  failure: the server said no, notify could not be reached, or something else went wrong
  2  usage error: unknown command or flag, a bad or missing value
  3  not found (get, keys revoke; replay: at least one id does not exist)
  4  API key refused: missing, unknown or revoked, or its role is not enough
  130  interrupted (Ctrl-C, SIGTERM)
`

const rootLong = `notifyctl talks to notify's gRPC API (the producer).

Flags go before or after the command and its arguments, and take two dashes (--dry-run),
except -o and -h. Every command that prints
something takes -o table|json|yaml and --no-headers; JSON and YAML are the API's
responses with protobuf JSON field names, counts as numbers and times in RFC 3339.

Connection: --addr (NOTIFY_ADDR) names the producer. With no TLS option the connection is
plaintext, as 'make run' serves it. --ca-file (NOTIFY_CA_FILE) verifies the producer's
certificate against that CA, --tls against the system's roots; --cert-file and --key-file
(NOTIFY_CERT_FILE, NOTIFY_KEY_FILE) present a client certificate (mTLS). --insecure forces
plaintext even when TLS options are set in the environment.

API keys: --api-key (NOTIFY_API_KEY) is sent as a bearer token. publish, cancel, devices
and preferences need a publisher or admin key, everything else an admin key. The first
admin key is made on a machine that can reach the database:
  producer keys create NAME --role admin      (DATABASE_URL; prints the secret)`

const defaultAddr = "127.0.0.1:50051"

// apiKeyPrefix starts every API key notify makes.
const apiKeyPrefix = "nfy_"

// Output formats of -o.
const (
	formatTable = "table"
	formatJSON  = "json"
	formatYAML  = "yaml"
)

// cli is one invocation's settings and outputs.
type cli struct {
	getenv      func(string) string
	addr        string
	apiKey      string
	timeout     time.Duration
	output      string
	json        bool
	noHeaders   bool
	tls         tlsOptions
	out, errOut io.Writer
	conn        *grpc.ClientConn
	// started is set once a command's own code runs: an error before that is cobra
	// refusing the command line (unknown command, bad flag, wrong arguments).
	started bool
}

// usageError marks a mistake in the command line (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// notFoundError is a not-found answer the command worked out itself (exit code 3), e.g.
// a replay in which an id does not exist; its message is printed as is.
type notFoundError struct{ msg string }

func (e notFoundError) Error() string { return e.msg }

func run(ctx context.Context, args []string, getenv func(string) string, out, errOut io.Writer) int {
	c := &cli{getenv: getenv, out: out, errOut: errOut}
	root := c.rootCommand(args)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	var code int
	if err != nil && ctx.Err() != nil {
		// Stopped by main's signal context: whatever the call said is only that.
		fmt.Fprintln(errOut, "notifyctl: interrupted")
		code = exitInterrupted
	} else {
		code = c.exitCode(cmd, err) // before Close: it asks the connection what happened
	}
	if c.conn != nil {
		c.conn.Close()
	}
	return code
}

func (c *cli) rootCommand(args []string) *cobra.Command {
	root := &cobra.Command{
		Use:   "notifyctl",
		Short: "notifyctl talks to notify's gRPC API",
		Long:  rootLong,
		Example: `  notifyctl publish --user ana --title 'Your order shipped' --idempotency-key order-42
  notifyctl get --wait 10s ID
  notifyctl list --status failed --since 1h -o json
  notifyctl dead list --reason retries_exhausted --unreplayed
  notifyctl replay --dead --reason retries_exhausted --since 1h --dry-run
  notifyctl --ca-file ca.pem --addr notify.example.com:443 keys list`,
		Version:       buildinfo.Read().String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a command: the usage on stderr and exit 2, as scripts expect of a mistake.
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprint(c.errOut, cmd.UsageString())
			return usagef("give a command")
		},
	}
	root.SetVersionTemplate("notifyctl {{.Version}}\n")
	// Before the completion command is made: its scripts go to the writer set now.
	root.SetOut(c.out)
	root.SetErr(c.errOut)
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return flagError(cmd, args, err) })

	pf := root.PersistentFlags()
	pf.StringVar(&c.addr, "addr", defaultAddr, "the producer's gRPC `address`, host:port (env NOTIFY_ADDR)")
	pf.StringVar(&c.apiKey, "api-key", "", "API `key` sent as a bearer token (env NOTIFY_API_KEY)")
	pf.DurationVar(&c.timeout, "timeout", 30*time.Second, "per-call timeout")
	pf.StringVarP(&c.output, "output", "o", formatTable, "output `format`: table, json or yaml")
	pf.BoolVar(&c.json, "json", false, "same as -o json")
	pf.BoolVar(&c.noHeaders, "no-headers", false, "tables without their header line (and summaries on stderr)")
	c.tls.addFlags(pf)
	_ = root.RegisterFlagCompletionFunc("output",
		cobra.FixedCompletions([]string{formatTable, formatJSON, formatYAML}, cobra.ShellCompDirectiveNoFileComp))

	root.AddCommand(c.publishCommand(), c.cancelCommand(), c.getCommand(), c.listCommand(), c.deadCommand(), c.replayCommand(),
		c.keysCommand(), c.devicesCommand(), c.preferencesCommand(), c.versionCommand())
	// Every command's help ends with the exit codes.
	root.SetUsageTemplate(root.UsageTemplate() + "\n" + exitCodesHelp)

	// cobra's own help and completion commands answer a mistake with a help text and exit 0
	// (`help bogus`, `completion tcsh`, a bare `completion`): made here rather than in
	// Execute, so that they answer it as every other command does, with a usage error.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, cmd := range root.Commands() {
		switch cmd.Name() {
		case "help":
			cmd.RunE = helpTopic(cmd.Run)
		case "completion":
			cmd.Args = nil // group names the shells
			cmd.RunE = group
		}
	}
	return root
}

// helpTopic is the RunE of the help command around cobra's (show): a topic that is not a
// command is a usage error naming it, where cobra printed the root's usage and exited 0.
func helpTopic(show func(*cobra.Command, []string)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		target, rest, err := cmd.Root().Find(args)
		switch {
		case len(rest) > 0:
			msg := fmt.Sprintf("help: %s has no command %q", target.CommandPath(), rest[0])
			target.SuggestionsMinimumDistance = cmp.Or(target.SuggestionsMinimumDistance, 2) // cobra's default
			if near := target.SuggestionsFor(rest[0]); len(near) > 0 {
				msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(near, " or "))
			}
			return usageError{msg}
		case err != nil:
			return usagef("help: %v", err)
		}
		show(cmd, args)
		return nil
	}
}

// action wraps a command's code: it marks the command line as accepted and settles the
// global settings (flags over environment over defaults) before the code runs.
func (c *cli) action(f func(ctx context.Context, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c.started = true
		if err := checkUTF8(cmd, args); err != nil {
			return err
		}
		if err := c.settle(cmd.Flags()); err != nil {
			return err
		}
		return f(cmd.Context(), args)
	}
}

// checkUTF8 refuses a flag value or an argument that is not UTF-8 (a Latin-1 terminal, a
// stray byte): a protobuf string cannot carry it, and the call would fail in gRPC's
// marshalling with an INTERNAL error that names nothing.
func checkUTF8(cmd *cobra.Command, args []string) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		values := []string{f.Value.String()}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			values = sv.GetSlice()
		}
		for _, v := range values {
			if i := invalidUTF8(v); i >= 0 && err == nil {
				err = usagef("--%s is not UTF-8 text (byte %d of %q)", f.Name, i, v)
			}
		}
	})
	if err != nil {
		return err
	}
	for n, a := range args {
		if i := invalidUTF8(a); i >= 0 {
			return usagef("%s: argument %d is not UTF-8 text (byte %d of %q)", strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" "), n+1, i, a)
		}
	}
	return nil
}

// invalidUTF8 is the offset of the first byte of s that is not UTF-8, or -1.
func invalidUTF8(s string) int {
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size == 1 {
				return i
			}
		}
	}
	return -1
}

// settle applies the environment to the global flags not given and checks them.
func (c *cli) settle(fs *pflag.FlagSet) error {
	if !fs.Changed("addr") {
		c.addr = cmp.Or(c.getenv("NOTIFY_ADDR"), defaultAddr)
	}
	if err := checkAddr(c.addr, fs.Changed("addr")); err != nil {
		return err
	}
	if !fs.Changed("api-key") {
		c.apiKey = c.getenv("NOTIFY_API_KEY")
	}
	// A key read from a file or a Secret often keeps its newline; anything else that is not
	// printable ASCII cannot be a key, nor travel in a gRPC header.
	c.apiKey = strings.TrimSpace(c.apiKey)
	if i := strings.IndexFunc(c.apiKey, func(r rune) bool { return r <= ' ' || r > '~' }); i >= 0 {
		r, _ := utf8.DecodeRuneInString(c.apiKey[i:])
		hint := ""
		if len(c.apiKey) > len("Bearer ") && strings.EqualFold(c.apiKey[:len("Bearer ")], "Bearer ") {
			hint = `; give it without "Bearer "`
		}
		return usagef("--api-key (NOTIFY_API_KEY) has %q at byte %d: an API key is printable ASCII without spaces (nfy_…)%s", r, i, hint)
	}
	if c.timeout <= 0 {
		return usagef("--timeout must be more than 0")
	}
	switch {
	case c.json && fs.Changed("output") && c.output != formatJSON:
		return usagef("--json and -o %s disagree: give one of them", c.output)
	case c.json:
		c.output = formatJSON
	}
	switch c.output {
	case formatTable, formatJSON, formatYAML:
	default:
		return usagef("-o %q: want table, json or yaml", c.output)
	}
	return c.tls.settle(fs, c.getenv)
}

// checkAddr refuses an http(s) URL where host:port belongs (pasted from a browser or a
// load balancer's page), which gRPC would dial as a target named "http" on port 443.
// Other schemes are gRPC's own target syntax (dns:///, unix://) and are left to it.
func checkAddr(addr string, flag bool) error {
	u, err := url.Parse(addr)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil
	}
	name := "NOTIFY_ADDR"
	if flag {
		name = "--addr"
	}
	if u.Scheme == "http" {
		return usagef("%s %q: want host:port without http:// (--addr %s)", name, addr, net.JoinHostPort(u.Hostname(), cmp.Or(u.Port(), "80")))
	}
	return usagef("%s %q: want host:port without https:// (--addr %s with --tls or --ca-file)", name, addr, net.JoinHostPort(u.Hostname(), cmp.Or(u.Port(), "443")))
}

func (c *cli) exitCode(cmd *cobra.Command, err error) int {
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) || !c.started {
		path := "notifyctl"
		if cmd != nil {
			path = cmd.CommandPath()
		}
		fmt.Fprintf(c.errOut, "notifyctl: %v\nRun '%s --help' for usage.\n", err, path)
		return exitUsage
	}
	var nf notFoundError
	if errors.As(err, &nf) {
		fmt.Fprintf(c.errOut, "notifyctl: %s\n", nf.msg)
		return exitNotFound
	}
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(c.errOut, "notifyctl: %v\n", err)
		return exitFailure
	}
	if msg, ok := c.unreachable(st); ok {
		fmt.Fprintf(c.errOut, "notifyctl: %s\n", msg)
		return exitFailure
	}
	fmt.Fprintf(c.errOut, "notifyctl: %s: %s\n", st.Code(), st.Message())
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fmt.Fprintf(c.errOut, "  %s: %s\n", v.GetField(), v.GetDescription())
			}
		}
	}
	switch st.Code() {
	case codes.NotFound:
		return exitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		switch {
		case c.apiKey == "":
			fmt.Fprintln(c.errOut, "  (no API key given: use --api-key or NOTIFY_API_KEY)")
		case st.Code() == codes.Unauthenticated && !strings.HasPrefix(c.apiKey, apiKeyPrefix):
			fmt.Fprintf(c.errOut, "  (the key given does not start with %s, as notify's keys do: give the key itself, e.g. NOTIFY_API_KEY=$(cat FILE))\n", apiKeyPrefix)
		}
		return exitAuth
	}
	return exitFailure
}

// callCtx is the context of one RPC: the timeout and the API key.
func (c *cli) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	if c.apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.apiKey)
	}
	return ctx, cancel
}

// open is what an RPC command starts with: the connection and the context of its call.
func (c *cli) open(ctx context.Context) (*grpc.ClientConn, context.Context, context.CancelFunc, error) {
	conn, err := c.client()
	if err != nil {
		return nil, nil, nil, err
	}
	callCtx, cancel := c.callCtx(ctx)
	return conn, callCtx, cancel, nil
}

// positional checks a command's positional arguments: n of them (-1: any number, at least one),
// with what they are for the message.
func positional(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		// The message is printed after "notifyctl: ": the path without the root's name.
		path := strings.TrimPrefix(cmd.CommandPath(), cmd.Root().Name()+" ")
		switch {
		case n == 0 && len(args) > 0:
			return usagef("%s takes no arguments (got %q)", path, strings.Join(args, " "))
		case n > 0 && len(args) != n, n < 0 && len(args) == 0:
			return usagef("%s: give %s", path, what)
		}
		return nil
	}
}

// flagError is the error of a command line pflag could not parse (args is the whole of it).
// pflag reads a single-dash word as shorthand letters: -help, as Go's flag package (and
// every other notify binary) spells it, is help; another single-dash long flag
// (-dry-run) is refused with its two-dash spelling, rather than as an unknown letter.
func flagError(cmd *cobra.Command, args []string, err error) error {
	var ne *pflag.NotExistError
	if !errors.As(err, &ne) {
		return usageError{err.Error()}
	}
	if ne.GetSpecifiedShortnames() == "" {
		if near := nearFlag(cmd.Flags(), ne.GetSpecifiedName()); near != "" {
			return usagef("%v (did you mean --%s?)", err, near)
		}
		return usageError{err.Error()}
	}
	// The word that failed ends with the letters pflag had not read yet (-help fails at
	// "elp", after -h).
	for _, a := range args {
		if a == "--" {
			break
		}
		name, single := strings.CutPrefix(a, "-")
		if !single || strings.HasPrefix(name, "-") || !strings.HasSuffix(name, ne.GetSpecifiedShortnames()) {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		switch {
		case name == "help":
			return pflag.ErrHelp
		case cmd.Flags().Lookup(name) != nil:
			return usagef("%s: flags take two dashes: --%s", a, name)
		}
	}
	return usageError{err.Error()}
}

// nearFlag is the one flag of fs that name (an unknown long flag) most likely meant: the
// same but for case, '-' and '_' (--dry_run, --dryrun), else the only one it begins
// (--unreplay), else the only one a single typo away (--users, --tittle, --tpye: a letter
// more, less, changed or two swapped); "" when there is none or more than one.
func nearFlag(fs *pflag.FlagSet, name string) string {
	norm := func(s string) string { return strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(s)) }
	var same, prefixed, typo []string
	fs.VisitAll(func(f *pflag.Flag) {
		switch {
		case f.Hidden:
		case norm(f.Name) == norm(name):
			same = append(same, f.Name)
		case len(name) >= 3 && strings.HasPrefix(norm(f.Name), norm(name)):
			prefixed = append(prefixed, f.Name)
		case len(name) >= 3 && oneTypo(norm(f.Name), norm(name)):
			typo = append(typo, f.Name)
		}
	})
	for _, found := range [][]string{same, prefixed, typo} {
		if len(found) > 0 {
			if len(found) == 1 {
				return found[0]
			}
			return ""
		}
	}
	return ""
}

// oneTypo reports whether b is a one typo away from a: a letter inserted, dropped or
// changed, or two neighbours swapped (the optimal string alignment distance is 1).
func oneTypo(a, b string) bool {
	if len(a) < len(b) {
		a, b = b, a
	}
	switch len(a) - len(b) {
	case 0:
		i := 0
		for i < len(a) && a[i] == b[i] {
			i++
		}
		if i == len(a) {
			return false // the same
		}
		return a[i+1:] == b[i+1:] || // changed
			i+1 < len(a) && a[i] == b[i+1] && a[i+1] == b[i] && a[i+2:] == b[i+2:] // swapped
	case 1:
		i := 0
		for i < len(b) && a[i] == b[i] {
			i++
		}
		return a[i+1:] == b[i:] // one more in a
	}
	return false
}

// group is the RunE of a command that only holds subcommands: naming none, or an unknown
// one, is a usage error that lists them. `GROUP help [SUB]` is `help GROUP [SUB]`.
func group(cmd *cobra.Command, args []string) error {
	var names []string
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	switch {
	case len(args) == 0:
		return usagef("%s needs a subcommand: %s", cmd.CommandPath(), strings.Join(names, ", "))
	case args[0] == "help":
		// Through the help command, which shows `keys help create` and refuses
		// `keys help bogus` naming bogus; the rest was once taken for an unknown "help".
		if help, _, err := cmd.Root().Find([]string{"help"}); err == nil && help.Name() == "help" && help.RunE != nil {
			return help.RunE(help, append(strings.Fields(cmd.CommandPath())[1:], args[1:]...))
		}
		return cmd.Help()
	}
	return usagef("unknown %s subcommand %q (want %s)", cmd.CommandPath(), args[0], strings.Join(names, ", "))
}

// enumFlag completes a flag's fixed values in the shell.
func enumFlag(cmd *cobra.Command, name string, values ...string) {
	_ = cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(values, cobra.ShellCompDirectiveNoFileComp))
}

// Command backflow reads Parquet exports from S3 or a local folder, maps every row to a
// Segment-spec message and delivers the messages to Segment, webhooks, files, stdout or
// S3, remembering what every destination acknowledged.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/logging"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// Exit codes (SPEC.md).
const (
	exitOK      = 0
	exitFailed  = 1
	exitUsage   = 2
	exitPartial = 3
)

// exitError carries an exit code for an error already reported, or to report.
type exitError struct {
	code int
	err  error // nil: already reported
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// defaultMemoryLimit is the Go runtime's soft memory limit unless GOMEMLIMIT is set: the
// garbage collector works harder near it, so a run's memory stays near what its row
// groups in flight need instead of growing with the heap's headroom. It is soft: a run
// that truly needs more gets more.
const defaultMemoryLimit = 256 << 20

func main() {
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	stopProfile := startCPUProfile(os.Getenv("BACKFLOW_CPUPROFILE"), os.Stderr)
	code := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stopProfile()
	os.Exit(code)
}

// startCPUProfile writes a CPU profile of the whole command to path (for `go tool pprof`)
// until the returned func is called; an empty path profiles nothing. A profile that
// cannot be written is reported on stderr and the command runs without it.
func startCPUProfile(path string, stderr io.Writer) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "backflow: BACKFLOW_CPUPROFILE: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintf(stderr, "backflow: BACKFLOW_CPUPROFILE: %v\n", err)
		}
	}
}

// run executes the command line and returns the process's exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signalContext(context.Background(), stderr)
	defer stop()
	// A reader that closes stdout early (`sync | head -1`) must not kill the process
	// with SIGPIPE before it saves and prints its summary: with SIGPIPE notified, a
	// write to the closed pipe returns EPIPE, and the stdout destination fails like any
	// destination that stops answering.
	pipe := make(chan os.Signal, 1)
	signal.Notify(pipe, syscall.SIGPIPE)
	defer signal.Stop(pipe)
	g := &globalOptions{stdout: stdout, stderr: stderr, getenv: os.LookupEnv}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// A command line naming no command is refused here, typed, rather than by matching
	// cobra's wording afterwards.
	err := checkCommand(root, args)
	if err == nil {
		err = root.ExecuteContext(ctx)
	}
	if err == nil {
		return exitOK
	}
	code := exitCode(err)
	var ee *exitError
	if errors.As(err, &ee) && ee.err == nil {
		return code
	}
	printError(stderr, err, g.secrets)
	return code
}

// signalContext is cancelled on the first SIGINT/SIGTERM; a second one exits at once.
func signalContext(parent context.Context, stderr io.Writer) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig, ok := <-ch
		if !ok {
			return
		}
		fmt.Fprintf(stderr, "backflow: %s received: stopping (send it again to exit at once)\n", sig)
		cancel(fmt.Errorf("%s received", sig))
		if _, ok := <-ch; ok {
			fmt.Fprintln(stderr, "backflow: second signal: exiting now")
			os.Exit(exitFailed)
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(ch)
		cancel(nil)
	}
}

// checkCommand refuses an unknown command as a usage error. cobra reports one as a
// plain error; Find returns it before anything runs.
func checkCommand(root *cobra.Command, args []string) error {
	if len(args) > 0 && (args[0] == cobra.ShellCompRequestCmd || args[0] == cobra.ShellCompNoDescRequestCmd) {
		return nil // the shell asking for completions: cobra adds that command itself
	}
	// help and completion are added by Execute; add them now so that Find knows them.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	if _, _, err := root.Find(args); err != nil {
		return &usageError{err}
	}
	return nil
}

// exitCode maps an error to SPEC.md's exit codes.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	// One configuration error type, whoever found the problem (the loader, the mapper
	// against the schema, the run).
	var cfgErr *config.Error
	var usage *usageError
	if errors.As(err, &cfgErr) || errors.As(err, &usage) {
		return exitUsage
	}
	return exitFailed
}

// printError writes the error as one line per problem, each prefixed "backflow: ",
// with every secret scrubbed.
func printError(w io.Writer, err error, secrets []string) {
	msg := logging.Scrub(err.Error(), secrets)
	for _, line := range splitLines(msg) {
		fmt.Fprintf(w, "backflow: %s\n", line)
	}
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

// noArgs refuses arguments as a usage error (exit code 2). A word after a command is
// most often a sync's name: say how to pick one.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("%q takes no arguments, got %q", cmd.CommandPath(), args[0])
	if cmd.Flags().Lookup("sync") != nil {
		msg += fmt.Sprintf("; to pick a sync, use --sync %s", args[0])
	}
	return &usageError{errors.New(msg)}
}

// usageError is a wrong command line (exit code 2).
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func newRootCommand(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:   "backflow",
		Short: "Reverse ETL from Parquet exports to Segment, webhooks, files and S3",
		Long: `backflow reads the Parquet files a warehouse exports under an S3 prefix (or a local
folder), checks them, maps every row to a Segment-spec message (identify, track or group)
and delivers the messages to destinations, remembering what each acknowledged so the
next run sends only what is new.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &usageError{err} })
	// The log flags are checked before any command runs, so a typo is exit 2 everywhere.
	root.PersistentPreRunE = func(*cobra.Command, []string) error {
		_, err := g.logger()
		return err
	}
	g.addFlags(root)
	root.AddCommand(
		newCheckCommand(g),
		newSchemaCommand(g),
		newPreviewCommand(g),
		newSyncCommand(g),
		newServeCommand(g),
		newStateCommand(g),
		newRejectsCommand(g),
	)
	return root
}

package fanout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tenantplane/tenantplane/catalog"
	"github.com/tenantplane/tenantplane/internal/pgtest"
)

func TestMain(m *testing.M) {
	// A test that kills a process starts this binary again (startHelper) as
	// that process: the variable it sets says which one, and no test runs.
	if os.Getenv(helperEnv) != "" {
		runHelperProcess("fan-out", fanoutHelperProcess) // TestFanoutKilledProcessResumes
	}
	pgtest.Main(m)
}

var catalogTemplate = pgtest.WithTemplate("catalog-"+pgtest.HashFS(catalog.Migrations()), catalog.Migrate)

// openCatalog opens the catalog at dsn with its secret key (catalog.NewKey's form).
func openCatalog(ctx context.Context, dsn, key string, cfg catalog.StoreConfig) (*catalog.Store, error) {
	k, err := catalog.ParseKey(key)
	if err != nil {
		return nil, err
	}
	cipher, err := catalog.NewCipher(k)
	if err != nil {
		return nil, err
	}
	return catalog.Open(ctx, dsn, cipher, cfg)
}

// Helper processes: the processes that the kill tests start and kill.
//
// The test starts its binary again (startHelper) with a variable that
// TestMain knows, and with the catalog to work on in CATALOG_DSN and
// SECRET_KEY (helperStore opens it). The helper runs until it is killed, or
// until its stdin closes: the test that started it is gone (killed by go
// test's timeout, say), and nothing else would stop it.

// runHelperProcess runs a helper process in place of the tests, and exits.
func runHelperProcess(name string, run func() error) {
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		fmt.Fprintf(os.Stderr, "%s helper process: the test that started it is gone; exiting\n", name)
		os.Exit(3)
	}()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "%s helper process: %v\n", name, err)
		os.Exit(2)
	}
	os.Exit(0)
}

// helperStore opens, in a helper process, the catalog its test named.
func helperStore(ctx context.Context) (*catalog.Store, error) {
	return openCatalog(ctx, os.Getenv("CATALOG_DSN"), os.Getenv("SECRET_KEY"), catalog.StoreConfig{MaxConns: 40})
}

// helperLogger is a helper process's logger: warnings and errors, on stderr,
// which the test passes through.
func helperLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// helperProcess is the test binary started again as a helper process.
type helperProcess struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited; err is then what Wait said
	err  error
}

// startHelper starts the test binary again as a helper process, with env
// added to its environment (one of the entries names the helper: see
// TestMain), its stdout written to stdout (nil discards it) and its stderr
// passed through. It is killed when the test ends, if the test did not.
func startHelper(t testing.TB, stdout io.Writer, env ...string) *helperProcess {
	t.Helper()
	// Its stdin is a pipe that this process holds open: should this process
	// die without killing it, the pipe closes and the helper exits.
	stdinR, stdinW, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "-test.run=^$") // runs no test, should TestMain not take the branch
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, stdout, os.Stderr
	err = cmd.Start()
	_ = stdinR.Close() // the helper has its own copy
	if err != nil {
		_ = stdinW.Close()
		require.NoError(t, err, "starting the helper process")
	}
	h := &helperProcess{cmd: cmd, done: make(chan struct{})}
	go func() {
		h.err = cmd.Wait()
		_ = stdinW.Close()
		close(h.done)
	}()
	t.Cleanup(func() { _ = h.stop() })
	return h
}

// stop kills the helper process (SIGKILL: nothing runs in it any more, no
// deferred call, no graceful stop) and waits until it has exited.
func (h *helperProcess) stop() error {
	if err := h.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-h.done:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("the helper process did not exit 30s after SIGKILL")
	}
}

// kill kills the helper process, waits for it, and checks that it was the
// signal that ended it: a helper that exited by itself did not do its part.
func (h *helperProcess) kill(t testing.TB) {
	t.Helper()
	require.NoError(t, h.stop())
	var exitErr *exec.ExitError
	require.True(t, errors.As(h.err, &exitErr) && exitErr.ExitCode() == -1,
		"the helper process should have been ended by SIGKILL, but it exited by itself: %v", h.err)
}

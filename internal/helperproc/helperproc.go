// Package helperproc starts a test binary again as a helper process, for
// tests that must kill a real process (SIGKILL: no deferred call, no
// graceful stop) and see what a restart makes of the work it left.
//
// The test starts the binary with Start and a variable that its TestMain
// knows; TestMain sees the variable and calls Run instead of the tests:
//
//	func TestMain(m *testing.M) {
//		if os.Getenv("MY_HELPER") != "" {
//			helperproc.Run("my", func() error { ... }) // does not return
//		}
//		pgtest.Main(m)
//	}
//
// A helper runs until it is killed, or until its stdin closes: the test that
// started it is gone (killed by go test's timeout, say), and nothing else
// would stop it.
package helperproc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Run runs a helper process's work in place of the tests, and exits: 0 when
// run returns nil, 2 when it fails, 3 when the test that started it is gone.
func Run(name string, run func() error) {
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

// Process is the test binary started again as a helper process.
type Process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited; err is then what Wait said
	err  error
}

// Start starts the test binary again as a helper process, with env added to
// its environment (one of the entries names the helper for TestMain), its
// stdout written to stdout (nil discards it) and its stderr passed through.
// It is killed when the test ends, if the test did not kill it.
func Start(t testing.TB, stdout io.Writer, env ...string) *Process {
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
	p := &Process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = stdinW.Close()
		close(p.done)
	}()
	t.Cleanup(func() { _ = p.Stop() })
	return p
}

// Stop kills the helper process with SIGKILL and waits until it has exited.
func (p *Process) Stop() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("the helper process did not exit 30s after SIGKILL")
	}
}

// Kill kills the helper process, waits for it, and checks that it was the
// signal that ended it: a helper that exited by itself did not do its part.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	require.NoError(t, p.Stop())
	var exitErr *exec.ExitError
	require.True(t, errors.As(p.err, &exitErr) && exitErr.ExitCode() == -1,
		"the helper process should have been ended by SIGKILL, but it exited by itself: %v", p.err)
}

// Exited is closed once the helper process has exited; Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.done }

// Err is what waiting for the process said, once Exited is closed.
func (p *Process) Err() error { return p.err }

// Lines is an io.Writer that hands each line written to it to a channel: a
// helper process's stdout, read as it comes. A line nobody has room for is
// dropped, so make the channel far larger than what the helper says.
type Lines struct {
	mu    sync.Mutex
	buf   []byte
	lines chan string
}

// NewLines returns a Lines whose channel holds size lines.
func NewLines(size int) *Lines { return &Lines{lines: make(chan string, size)} }

// C is the channel of lines.
func (w *Lines) C() <-chan string { return w.lines }

func (w *Lines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- string(w.buf[:i]):
		default:
		}
		w.buf = w.buf[i+1:]
	}
}

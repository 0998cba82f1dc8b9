package stripetest

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestFindBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin", "stripe-mock")
	require.NoError(t, os.MkdirAll(filepath.Dir(bin), 0o755))
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755))
	notOnPath := func(string) (string, error) { return "", errors.New("not found") }
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	// Not on PATH, but in GOPATH/bin, where `go install` puts it.
	got, err := findBinary(env(map[string]string{"GOPATH": "/nonexistent" + string(filepath.ListSeparator) + dir}), notOnPath)
	require.NoError(t, err)
	require.Equal(t, bin, got)

	// PATH first.
	got, err = findBinary(env(map[string]string{"GOPATH": dir}), func(string) (string, error) { return "/usr/bin/stripe-mock", nil })
	require.NoError(t, err)
	require.Equal(t, "/usr/bin/stripe-mock", got)

	// The override wins, and must exist.
	got, err = findBinary(env(map[string]string{EnvBinary: bin}), notOnPath)
	require.NoError(t, err)
	require.Equal(t, bin, got)
	_, err = findBinary(env(map[string]string{EnvBinary: filepath.Join(dir, "nope")}), notOnPath)
	require.ErrorIs(t, err, ErrNotInstalled)

	// Nowhere: the error says how to install it.
	_, err = findBinary(env(map[string]string{"GOPATH": filepath.Join(dir, "empty")}), notOnPath)
	require.ErrorIs(t, err, ErrNotInstalled)
	require.Contains(t, err.Error(), "go install github.com/stripe/stripe-mock@"+Version)
}

func TestStartAnswersAndStops(t *testing.T) {
	t.Parallel()
	m := Start(t)
	require.True(t, strings.HasPrefix(m.URL, "http://127.0.0.1:"), m.URL)
	shared := Shared(t)
	require.NotEqual(t, m.URL, shared.URL, "a private mock has a port of its own")
	require.Same(t, shared, Shared(t))

	for _, url := range []string{m.URL, shared.URL} {
		req, err := http.NewRequest("POST", url+"/v1/customers", strings.NewReader("name=Acme"))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+Key)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	m.stop()
	_, err := http.Get(m.URL + "/v1/balance")
	require.Error(t, err, "a stopped mock no longer listens")
}

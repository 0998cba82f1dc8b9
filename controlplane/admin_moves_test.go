package controlplane

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMoveRoutesAnswerTheEdgeCases holds the move routes to the rules every
// admin route keeps, whatever the workflow behind them answers: the token,
// a malformed id is 404, the body is strict JSON, the page limit is checked.
func TestMoveRoutesAnswerTheEdgeCases(t *testing.T) {
	t.Parallel()
	b := setup(t, "")
	v1 := b.admin + "/admin/v1"

	t.Run("a malformed move id is not found", func(t *testing.T) {
		for _, path := range []string{"/moves/x", "/moves/0", "/moves/-3", "/moves/99999999999999999999", "/moves/1.5"} {
			for _, tc := range []struct{ method, suffix string }{{"GET", ""}, {"POST", "/cancel"}, {"POST", "/revert"}} {
				status, resp := call(t, tc.method, v1+path+tc.suffix, testToken, nil)
				require.Equal(t, http.StatusNotFound, status, "%s %s%s: %v", tc.method, path, tc.suffix, resp)
				require.Equal(t, "not_found", errorCode(t, resp))
			}
		}
	})

	t.Run("every move route needs the admin token", func(t *testing.T) {
		for _, tc := range []struct{ method, path string }{
			{"POST", "/tenants/acme/move"}, {"GET", "/moves"}, {"GET", "/moves/1"}, {"POST", "/moves/1/cancel"}, {"POST", "/moves/1/revert"},
		} {
			status, resp := call(t, tc.method, v1+tc.path, "", nil)
			require.Equal(t, http.StatusUnauthorized, status, "%s %s", tc.method, tc.path)
			require.Equal(t, "unauthorized", errorCode(t, resp))
		}
	})

	t.Run("the move's body is strict", func(t *testing.T) {
		for _, body := range []string{"", "  ", `{"to": "pg-2", "mode": "", "server": "pg-3"}`, `{"to": "pg-2"} {}`, `{"to": 2}`, `[`} {
			req, err := http.NewRequest("POST", v1+"/tenants/acme/move", bytes.NewBufferString(body))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, "body %q: %s", body, raw)
			require.Contains(t, string(raw), `"code":"invalid"`)
		}
	})

	t.Run("the list's limit is checked", func(t *testing.T) {
		for _, limit := range []string{"0", "1001", "x"} {
			status, resp := call(t, "GET", v1+"/moves?limit="+limit, testToken, nil)
			require.Equal(t, http.StatusBadRequest, status, "limit %s: %v", limit, resp)
			require.Equal(t, "invalid", errorCode(t, resp))
		}
	})
}

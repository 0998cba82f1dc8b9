package main

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWriteJSONIsTheAnswerIndented(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	// Key order and values stay as the API sent them.
	require.NoError(t, writeJSON(&buf, json.RawMessage(`{"z":1,"a":{"b":[1,2]},"n":null}`)))
	require.Equal(t, "{\n  \"z\": 1,\n  \"a\": {\n    \"b\": [\n      1,\n      2\n    ]\n  },\n  \"n\": null\n}\n", buf.String())
	require.Error(t, writeJSON(&buf, json.RawMessage(`{"z":`)))
}

func TestWriteServers(t *testing.T) {
	t.Parallel()
	var page struct {
		Servers []Server `json:"servers"`
	}
	require.NoError(t, json.Unmarshal([]byte(`{"servers": [
		{"id": 1, "name": "pg-1", "dsn": "postgres://admin@10.0.0.5:5432/postgres", "capacity": 100, "conn_budget": 50,
		 "state": "active", "tenants": 12, "created_at": "2026-03-01T10:00:00Z"},
		{"id": 2, "name": "pg-archive", "dsn": "postgres://admin@10.0.0.6:5432/postgres", "capacity": 5, "conn_budget": 200,
		 "state": "draining", "tenants": 5, "created_at": "2026-03-01T10:00:00Z"}
	]}`), &page))
	var buf bytes.Buffer
	require.NoError(t, writeServers(&buf, page.Servers))
	require.Equal(t, ""+
		"NAME        STATE     TENANTS/CAPACITY  CONN_BUDGET  DSN\n"+
		"pg-1        active    12/100            50           postgres://admin@10.0.0.5:5432/postgres\n"+
		"pg-archive  draining  5/5               200          postgres://admin@10.0.0.6:5432/postgres\n",
		buf.String())
}

func TestAPITimeAndID(t *testing.T) {
	t.Parallel()
	var v struct {
		A, B, C, D apiTime
		N, S, Z    apiID
	}
	require.NoError(t, json.Unmarshal([]byte(`{"A": "2026-03-01T10:00:00.999+01:00", "B": null, "C": "",
		"N": 12345678901234567890, "S": "k-1", "Z": null}`), &v))
	require.Equal(t, "2026-03-01T09:00:00Z", v.A.String())
	for _, tm := range []apiTime{v.B, v.C, v.D} {
		require.Equal(t, "-", tm.String())
	}
	require.Equal(t, apiID("12345678901234567890"), v.N)
	require.Equal(t, apiID("k-1"), v.S)
	require.Equal(t, apiID(""), v.Z)
	require.Error(t, json.Unmarshal([]byte(`{"A": "yesterday"}`), &v))
	require.Error(t, json.Unmarshal([]byte(`{"N": true}`), &v))
	require.Equal(t, "-", apiTime{time.Time{}}.String())
}

func TestOneLineAndTruncate(t *testing.T) {
	t.Parallel()
	require.Equal(t, "-", oneLine(""))
	require.Equal(t, "a b  c d", oneLine("a\tb\r\nc\x1bd"))
	require.Equal(t, "héllo", truncate("héllo", 5))
	require.Equal(t, "hé...", truncate("héllo!", 5))
}

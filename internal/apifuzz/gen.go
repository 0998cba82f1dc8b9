package apifuzz

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
)

// gen builds one request of an operation from its document.
type gen struct {
	r   *rand.Rand
	tgt Target
	op  string
}

// Broken path parameter values: what a careless or hostile client sends as
// an id. No bare "..": it would name another route (the URL's dot segments
// are resolved), not a bad id of this one; "%2e%2e" is sent instead.
var badIDs = []string{
	"0", "-1", "99999999999999999999999", "not-a-uuid", "00000000-0000-0000-0000-000000000000",
	"%2e%2e", "a%00b", "UPPER-CASE", "x;drop table tenants", "%ff%fe", "é", " ", strings.Repeat("x", 300),
}

// Broken query values.
var badQuery = []string{"-1", "0", "abc", "99999999999", "1.5", "", "%ff", strings.Repeat("9", 40), "2026-13", "null", "true"}

func (g *gen) chance(p float64) bool { return g.r.Float64() < p }

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

// request builds a valid request (valid) or one broken in one way.
func (g *gen) request(route *routers.Route, valid bool) built {
	op := route.Operation
	b := built{kind: "valid", method: route.Method, pathParams: map[string]string{}, query: url.Values{}}
	// What to break, when broken: one of the places the operation has.
	var places []string
	params := append(slices.Clone(route.PathItem.Parameters), op.Parameters...)
	for _, p := range params {
		if p.Value != nil && (p.Value.In == "path" || p.Value.In == "query") {
			places = append(places, p.Value.In)
		}
	}
	var bodySchema *openapi3.Schema
	if op.RequestBody != nil && op.RequestBody.Value != nil {
		if mt := op.RequestBody.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil {
			bodySchema = mt.Schema.Value
			places = append(places, "body")
		}
	}
	places = append(places, "query-unknown")
	breakAt := ""
	if !valid {
		breakAt = pick(g.r, places)
	}

	path := route.Path
	brokenOne := false
	for _, p := range params {
		pv := p.Value
		if pv == nil {
			continue
		}
		switch pv.In {
		case "path":
			v := g.pathValue(pv)
			if breakAt == "path" && !brokenOne {
				v, brokenOne = pick(g.r, badIDs), true
				b.kind = "bad id in path"
			}
			b.pathParams[pv.Name] = v
			esc := url.PathEscape(v)
			if strings.Contains(v, "%") { // sent as written: the server decodes it
				esc = v
			}
			path = strings.ReplaceAll(path, "{"+pv.Name+"}", esc)
		case "query":
			if breakAt == "query" && !brokenOne && g.chance(0.7) {
				b.query.Set(pv.Name, pick(g.r, badQuery))
				brokenOne = true
				b.kind = "bad query " + pv.Name
				continue
			}
			if pv.Required || g.chance(0.4) {
				if pv.Schema != nil && pv.Schema.Value != nil {
					b.query.Set(pv.Name, fmt.Sprint(g.value(pv.Schema.Value, 0)))
				}
			}
		}
	}
	if breakAt == "query-unknown" {
		b.query.Set("fuzz_unknown_"+fmt.Sprint(g.r.IntN(100)), pick(g.r, badQuery))
		b.kind = "unknown query parameter"
	}
	b.path = path

	if bodySchema != nil {
		v := g.value(bodySchema, 0)
		if g.tgt.Fix != nil {
			v = g.tgt.Fix(g.op, v)
		}
		b.body, b.contentType = jsonBody(v), "application/json"
		if breakAt == "body" {
			b.body, b.kind = g.breakBody(bodySchema, v)
		}
	}
	return b
}

// pathValue is a known value of a path parameter (most of the time) or one
// made from its schema.
func (g *gen) pathValue(p *openapi3.Parameter) string {
	if g.tgt.Param != nil {
		if known := g.tgt.Param(g.op, p.Name); len(known) > 0 && g.chance(0.85) {
			return pick(g.r, known)
		}
	}
	if p.Schema != nil && p.Schema.Value != nil {
		// Never empty: an empty segment names another route (a/b//c), not
		// a value of this one.
		if v := fmt.Sprint(g.value(p.Schema.Value, 0)); v != "" {
			return v
		}
	}
	return "x"
}

// value makes a value that satisfies s, as far as a generator can: the
// example, an enum member, or one of the type within its bounds.
func (g *gen) value(s *openapi3.Schema, depth int) any {
	if s == nil || depth > 6 {
		return nil
	}
	if s.Example != nil && g.chance(0.5) {
		return s.Example
	}
	if len(s.Enum) > 0 {
		return pick(g.r, s.Enum)
	}
	for _, alts := range [][]*openapi3.SchemaRef{s.OneOf, s.AnyOf} {
		if len(alts) > 0 {
			return g.value(pick(g.r, alts).Value, depth+1)
		}
	}
	if len(s.AllOf) > 0 {
		merged := map[string]any{}
		for _, part := range s.AllOf {
			if m, ok := g.value(part.Value, depth+1).(map[string]any); ok {
				for k, v := range m {
					merged[k] = v
				}
			}
		}
		return merged
	}
	switch {
	case s.Type.Is("string"):
		return g.str(s)
	case s.Type.Is("integer"):
		lo, hi := int64(1), int64(100)
		if s.Min != nil {
			lo = int64(*s.Min)
		}
		if s.Max != nil {
			hi = int64(*s.Max)
		} else {
			hi = max(hi, lo+100)
		}
		return lo + g.r.Int64N(max(1, hi-lo+1))
	case s.Type.Is("number"):
		return math.Round(g.r.Float64()*10000) / 100
	case s.Type.Is("boolean"):
		return g.chance(0.5)
	case s.Type.Is("array"):
		n := g.r.IntN(3)
		if s.MinItems > uint64(n) {
			n = int(s.MinItems)
		}
		out := make([]any, 0, n)
		for range n {
			if s.Items != nil {
				out = append(out, g.value(s.Items.Value, depth+1))
			}
		}
		return out
	default: // object, or untyped with properties
		out := map[string]any{}
		for name, prop := range s.Properties {
			if slices.Contains(s.Required, name) || g.chance(0.5) {
				if prop.Value != nil && prop.Value.ReadOnly {
					continue
				}
				out[name] = g.value(prop.Value, depth+1)
			}
		}
		return out
	}
}

const letters = "abcdefghijklmnopqrstuvwxyz0123456789"

func (g *gen) str(s *openapi3.Schema) string {
	switch s.Format {
	case "date-time":
		return time.Now().UTC().Add(-time.Duration(g.r.IntN(3600)) * time.Second).Format(time.RFC3339)
	case "date":
		return time.Now().UTC().Format("2006-01-02")
	case "uuid":
		b := make([]byte, 16)
		for i := range b {
			b[i] = byte(g.r.UintN(256))
		}
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	case "email":
		return "u" + fmt.Sprint(g.r.IntN(1_000_000)) + "@example.com"
	}
	lo, hi := int(s.MinLength), 12
	if s.MaxLength != nil {
		hi = min(hi, int(*s.MaxLength))
	}
	hi = max(hi, lo)
	n := lo + g.r.IntN(hi-lo+1)
	if n == 0 && g.chance(0.5) {
		n = 1
	}
	var b strings.Builder
	for i := range n {
		c := letters[g.r.IntN(len(letters))]
		if i == 0 {
			c = letters[g.r.IntN(26)] // identifiers start with a letter
		}
		b.WriteByte(c)
	}
	return b.String()
}

// breakBody breaks a valid body one way and says which.
func (g *gen) breakBody(s *openapi3.Schema, v any) ([]byte, string) {
	obj, isObj := v.(map[string]any)
	target := obj
	if arr, ok := v.([]any); ok && len(arr) > 0 { // a list of objects: break its first
		if m, ok := arr[0].(map[string]any); ok {
			target, isObj = m, true
		}
	}
	kinds := []string{"not JSON", "empty", "wrong top-level type", "huge body", "trailing data"}
	if isObj {
		kinds = append(kinds, "missing required field", "unknown field", "wrong type", "huge string", "bad UTF-8", "NUL in string", "boundary number", "null field")
	}
	kind := pick(g.r, kinds)
	switch kind {
	case "not JSON":
		return []byte(pick(g.r, []string{"{", "nope", "{\"a\":}", "\x00\x01", "<xml/>"})), kind
	case "empty":
		return nil, kind
	case "wrong top-level type":
		return []byte(pick(g.r, []string{"[]", "null", "\"x\"", "42", "true", "{}"})), kind
	case "huge body":
		return append([]byte(`{"x":"`), append(bytes.Repeat([]byte("a"), 2<<20), '"', '}')...), kind
	case "trailing data":
		return append(jsonBody(v), []byte(" {}")...), kind
	}
	keys := make([]string, 0, len(target))
	for k := range target {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	field := "name"
	if len(keys) > 0 {
		field = pick(g.r, keys)
	}
	switch kind {
	case "missing required field":
		if len(s.Required) > 0 {
			field = pick(g.r, s.Required)
		}
		delete(target, field)
	case "unknown field":
		target["fuzz_unknown"] = "x"
	case "wrong type":
		switch target[field].(type) {
		case string:
			target[field] = pick(g.r, []any{12345, true, []any{"a"}, map[string]any{"a": 1}})
		default:
			target[field] = pick(g.r, []any{"not a number", "", []any{}, map[string]any{}})
		}
	case "huge string":
		target[field] = strings.Repeat("ж", 70_000)
	case "NUL in string":
		target[field] = "a\x00b"
	case "boundary number":
		target[field] = pick(g.r, []any{-1, 0, math.MaxInt32 + 1, int64(math.MaxInt64), -int64(math.MaxInt64), 1e300, 0.5})
	case "null field":
		target[field] = nil
	case "bad UTF-8":
		target[field] = "\x00marker\x00"
		raw := jsonBody(v)
		return bytes.Replace(raw, []byte(`\u0000marker\u0000`), []byte("\xff\xfe\xfd"), 1), kind
	}
	return jsonBody(v), kind + " " + field
}

package datarights

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/tenantplane/tenantplane/internal/pgcluster"
)

// dumpRowCounts counts the rows a pg_dump -Fc file holds for each table of
// schema public, reading its data as pg_restore writes it out (no database
// involved): every COPY block's lines up to its "\.". A row is one line
// (COPY escapes newlines), so the count is exact; the data streams past,
// never held. schema_migrations is left out, as in countRows.
func dumpRowCounts(ctx context.Context, file string) (map[string]int64, error) {
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_restore"), "--data-only", "--file=-", file)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &limitedBuffer{b: &stderr, max: 4096}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	counts, perr := countCopyRows(out)
	if perr != nil {
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("reading the rows of %s: %v: %s", filepath.Base(file), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return counts, perr
}

// countCopyRows counts the data lines of each COPY block of a plain dump.
func countCopyRows(r io.Reader) (map[string]int64, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	counts := map[string]int64{}
	table := "" // the COPY block being read, "" outside one
	for {
		line, err := readLine(br)
		if errors.Is(err, io.EOF) {
			if table != "" {
				return nil, fmt.Errorf("the data of table %s ends before its end marker", table)
			}
			return counts, nil
		}
		if err != nil {
			return nil, err
		}
		switch {
		case table != "" && string(line) == `\.`:
			table = ""
		case table != "":
			counts[table]++
		case bytes.HasPrefix(line, []byte("COPY ")) && bytes.HasSuffix(line, []byte(" FROM stdin;")):
			name, ok := publicTable(string(line[len("COPY "):]))
			table = name
			if !ok {
				table = "\x00other" // counted apart, reported by no one
			} else if _, seen := counts[name]; !seen {
				counts[name] = 0
			}
		}
	}
}

// readLine returns the next line without its newline, however long (a
// long row is read through, only its start kept: only the markers matter).
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		head := append([]byte(nil), line[:min(len(line), 64)]...)
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = br.ReadSlice('\n')
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		return head, nil
	}
	if err != nil && (len(line) == 0 || !errors.Is(err, io.EOF)) {
		return nil, err
	}
	return bytes.TrimSuffix(line, []byte("\n")), nil
}

// publicTable reads the table of a COPY line's start, `public.name (cols)`
// with the name quoted when it must be, and says whether it is a table of
// schema public other than schema_migrations.
func publicTable(s string) (string, bool) {
	rest, ok := strings.CutPrefix(s, "public.")
	if !ok {
		return "", false
	}
	var name string
	if strings.HasPrefix(rest, `"`) {
		var b strings.Builder
		i := 1
		for ; i < len(rest); i++ {
			if rest[i] == '"' {
				if i+1 < len(rest) && rest[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				break
			}
			b.WriteByte(rest[i])
		}
		name = b.String()
	} else {
		name, _, _ = strings.Cut(rest, " ")
	}
	return name, name != "" && name != "schema_migrations"
}

// verifyCounts compares the rows read back from a restored database with
// those its backup holds, naming every table that differs.
func verifyCounts(restored, backup map[string]int64) error {
	var diffs []string
	for name, want := range backup {
		if name == "\x00other" {
			continue
		}
		switch got, ok := restored[name]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("table %s is missing (the backup has %d rows of it)", name, want))
		case got != want:
			diffs = append(diffs, fmt.Sprintf("table %s has %d rows, the backup %d", name, got, want))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		return fmt.Errorf("restore verification failed: %s", strings.Join(diffs, "; "))
	}
	return nil
}

package main_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/ingestor"
)

// repoRoot is the workspace root, relative to this package's directory.
const repoRoot = "../.."

// envVar is one environment variable some PulseBoard service reads: an `env:"NAME"` tag
// on a configuration struct field (pkg/config parses every configuration with
// caarlos0/env; nothing else reads the environment, except loadgen's -key default and
// the test helpers' PULSEBOARD_TEST_* variables, which are not service configuration).
type envVar struct {
	Name string
	// Defaults maps each declaring component to its envDefault ("" when none); a
	// variable read by several components may default differently in each (ADMIN_PORT).
	Defaults map[string]string
	// Doc is the declaring field's comment (the first declaration's), for reports.
	Doc string
}

// componentOf names the component that reads the configuration declared in a file.
func componentOf(rel string) string {
	first, _, _ := strings.Cut(filepath.ToSlash(rel), "/")
	switch first {
	case "cmd":
		return "pulseboard"
	case "pkg":
		return "shared"
	}
	return first
}

// envCatalog scans every non-test Go file of the workspace for `env` struct tags. The
// source, not reflection, is the reference: the standalone binaries' process configs live
// in package main (not importable), and the api module is scanned even while it is not
// a dependency of this module. TestEnvCatalogMatchesTheConfigStructs checks the scan
// against reflection over the importable Config structs.
func envCatalog(t *testing.T) map[string]*envVar {
	t.Helper()
	cat := map[string]*envVar{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "bench", "testdata", "testenv", "node_modules", "deploy", "scripts":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			var groupDoc string // "Host and Port of …" documents the fields that follow it
			for _, field := range st.Fields.List {
				doc := strings.TrimSpace(field.Doc.Text())
				if doc != "" {
					groupDoc = doc
				}
				if field.Tag == nil {
					continue
				}
				raw, err := strconv.Unquote(field.Tag.Value)
				require.NoError(t, err)
				tag := reflect.StructTag(raw)
				name, _, _ := strings.Cut(tag.Get("env"), ",")
				if name == "" || name == "-" {
					continue
				}
				v := cat[name]
				if v == nil {
					v = &envVar{Name: name, Defaults: map[string]string{}, Doc: groupDoc}
					cat[name] = v
				}
				comp := componentOf(rel)
				if prev, ok := v.Defaults[comp]; ok && prev != tag.Get("envDefault") {
					t.Errorf("%s: %s declares two defaults (%q, %q)", rel, name, prev, tag.Get("envDefault"))
				}
				v.Defaults[comp] = tag.Get("envDefault")
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, len(cat), 100, "the scan found too few variables; is repoRoot right?")
	return cat
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// reflectEnvTags collects the env tags (and defaults) of a Config struct, nested structs
// included, the way caarlos0/env walks it.
func reflectEnvTags(typ reflect.Type, out map[string]string) {
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		switch {
		case name != "" && name != "-":
			out[name] = f.Tag.Get("envDefault")
		case f.Type.Kind() == reflect.Struct && f.IsExported():
			reflectEnvTags(f.Type, out)
		}
	}
}

// The source scan must see every variable the importable Config structs declare (and
// with the same defaults): if it did not, the checks built on it would pass vacuously.
func TestEnvCatalogMatchesTheConfigStructs(t *testing.T) {
	t.Parallel()
	cat := envCatalog(t)
	for _, cfg := range []any{ingestor.Config{}, consumer.Config{}, alerter.Config{}} {
		tags := map[string]string{}
		reflectEnvTags(reflect.TypeOf(cfg), tags)
		require.NotEmpty(t, tags)
		for name, def := range tags {
			v, ok := cat[name]
			if !assert(t, ok, "%T reads %s, which the source scan missed", cfg, name) {
				continue
			}
			var defaults []string
			for _, d := range v.Defaults {
				defaults = append(defaults, d)
			}
			assert(t, slices.Contains(defaults, def), "%T: %s defaults to %q; the scan saw %v", cfg, name, def, v.Defaults)
		}
	}
	// The standalone binaries' own settings (package main, so only the scan sees them).
	for _, name := range []string{"DATABASE_URL", "REDIS_URL", "ADMIN_HOST", "ADMIN_PORT", "LOG_LEVEL",
		"CONSUMER_DB_MAX_CONNS", "CONSUMER_STATEMENT_TIMEOUT", "ALERTER_DB_MAX_CONNS", "PULSEBOARD_DRAIN_TIMEOUT"} {
		require.Contains(t, cat, name)
	}
	require.Equal(t, "9101", cat["ADMIN_PORT"].Defaults["ingestor"])
	require.Equal(t, "9100", cat["ADMIN_PORT"].Defaults["pulseboard"])
}

// assert reports a failure without stopping the test, and returns ok.
func assert(t *testing.T, ok bool, format string, args ...any) bool {
	t.Helper()
	if !ok {
		t.Errorf(format, args...)
	}
	return ok
}

// readRepoFile reads a file relative to the repository root.
func readRepoFile(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	require.NoError(t, err)
	return b
}

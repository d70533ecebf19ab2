package httperr

import (
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsNoProjectPackage keeps the error codes in a package every layer can import:
// httperr must not import any PulseBoard package (pkg/event takes its codes from here).
func TestImportsNoProjectPackage(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	files := append(append([]string{}, pkg.GoFiles...), pkg.IgnoredGoFiles...)
	if len(files) == 0 {
		t.Fatal("no Go files found")
	}
	fset := token.NewFileSet()
	for _, name := range files {
		f, err := parser.ParseFile(fset, filepath.Join(".", name), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if path == "github.com/pulseboard/pulseboard" || strings.HasPrefix(path, "github.com/pulseboard/pulseboard/") {
				t.Errorf("%s imports %s: httperr must import no PulseBoard package", name, path)
			}
		}
	}
}

func TestAppendBody(t *testing.T) {
	got := string(AppendBody(nil, InvalidJSON, "body/name \"x\"\\\n\r\t\x01 é"))
	want := `{"success":false,"code":"INVALID_JSON","message":"body/name \"x\"\\\n\r\t\u0001 é"}`
	if got != want {
		t.Fatalf("AppendBody = %s, want %s", got, want)
	}
}

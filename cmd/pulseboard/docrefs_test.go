package main_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The repository documents itself in docs/, and the code cites those documents by path
// and id: "docs/reliability.md promise 14", "docs/reliability.md B34",
// `docs/api.md "Live streams"`. These tests keep the citations followable by someone who
// has only a clone: every docs/ path named anywhere exists, every relative Markdown link
// resolves, every cited promise, row id, pitfall id and quoted section exists in the
// document it names, and nothing cites the upper-case design files the project started
// from (they never were in the repository).

// oldDesignRef matches a citation of the original, out-of-repository design files.
var oldDesignRef = regexp.MustCompile(`\b(?:RELIABILITY|API|ARCHITECTURE|STYLE)\.md\b`)

// oldDesignRefExceptions are files that may still cite the old names, with the reason.
// Each entry must still need its exception (the test says when it can go).
var oldDesignRefExceptions = map[string]string{}

// docScanFile is one scanned file: its path relative to the repository root and text.
type docScanFile struct {
	rel  string
	text string
}

// docScanFiles returns the repository's source, script, configuration and documentation
// files, without vendored or generated trees (node_modules, testdata, results, bin).
func docScanFiles(t *testing.T) []docScanFile {
	t.Helper()
	var files []docScanFile
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "bin", "node_modules", "testdata", "results", "__pycache__":
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch filepath.Ext(rel) {
		case ".go", ".md", ".sh", ".py", ".yml", ".yaml", ".json", ".conf", ".sql":
		default:
			if base := filepath.Base(rel); base != "Makefile" && base != "Dockerfile" && !strings.HasPrefix(rel, ".ci/") {
				return nil
			}
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files = append(files, docScanFile{rel: rel, text: string(b)})
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, len(files), 200, "the scan found too few files; is repoRoot right?")
	return files
}

// TestDocReferencesResolve checks every citation of the repository's documents.
func TestDocReferencesResolve(t *testing.T) {
	t.Parallel()
	files := docScanFiles(t)

	// No citation of the old design files.
	for _, f := range files {
		hits := oldDesignRef.FindAllString(f.text, -1)
		if reason, ok := oldDesignRefExceptions[f.rel]; ok {
			assert(t, len(hits) > 0, "%s no longer cites the old design files: remove its exception (%s)", f.rel, reason)
			continue
		}
		assert(t, len(hits) == 0, "%s cites %v: cite docs/reliability.md, docs/api.md or docs/architecture.md instead", f.rel, hits)
	}

	// Every docs/… path named anywhere exists.
	docPath := regexp.MustCompile(`(?:^|[^\w/.-])(docs/[\w./-]*[\w-]\.md)\b`)
	cited := 0
	for _, f := range files {
		for _, m := range docPath.FindAllStringSubmatch(f.text, -1) {
			cited++
			_, err := os.Stat(filepath.Join(repoRoot, m[1]))
			assert(t, err == nil, "%s names %s, which does not exist", f.rel, m[1])
		}
	}
	require.Greater(t, cited, 80, "too few docs/ citations found; is the pattern right?")

	// Relative Markdown links resolve (files and directories; anchors are not checked).
	mdLink := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, f := range files {
		if filepath.Ext(f.rel) != ".md" {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(f.text, -1) {
			target, _, _ := strings.Cut(m[1], "#")
			if target == "" || strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			_, err := os.Stat(filepath.Join(repoRoot, filepath.Dir(f.rel), target))
			assert(t, err == nil, "%s links to %s, which does not exist", f.rel, m[1])
		}
	}

	// Cited ids and quoted sections exist in the document they name.
	docs := map[string]*citedDoc{}
	for _, name := range []string{"reliability", "api", "architecture"} {
		docs[name] = parseCitedDoc(string(readRepoFile(t, "docs/"+name+".md")))
	}
	rel := docs["reliability"]
	require.Len(t, rel.promises, 19, "docs/reliability.md should number promises 1–19")
	for _, id := range []string{"F04", "B34", "B40", "K12", "R2", "J6", "W7", "H6", "X2", "KR6"} {
		require.True(t, rel.ids[id], "docs/reliability.md defines no %s; is the parser right?", id)
	}

	quoted := regexp.MustCompile(`docs/(reliability|api|architecture)\.md(?:'s)?,? "([^"]+)"`)
	refAt := regexp.MustCompile(`docs/reliability\.md`)
	idRe := regexp.MustCompile(`\b(?:KR\d+|[BFKRJWHX]\d{1,2}[a-e]?)\b`)
	promiseRe := regexp.MustCompile(`\bpromises? (\d+(?:\s*(?:,|and|–|-)\s*\d+)*)`)
	number := regexp.MustCompile(`\d+`)
	windowEnd := regexp.MustCompile(`[)";|]|: |\. `)
	checkedIDs, checkedSections := 0, 0
	for _, f := range files {
		text := joinCommentLines(f.text)
		for _, m := range quoted.FindAllStringSubmatch(text, -1) {
			checkedSections++
			assert(t, docs[m[1]].hasSection(m[2]), "%s cites docs/%s.md %q, which has no such section", f.rel, m[1], m[2])
		}
		if f.rel == "docs/reliability.md" {
			continue
		}
		for _, loc := range refAt.FindAllStringIndex(text, -1) {
			window := text[loc[1]:min(len(text), loc[1]+160)]
			if i := windowEnd.FindStringIndex(window); i != nil {
				window = window[:i[0]]
			}
			for _, id := range idRe.FindAllString(window, -1) {
				checkedIDs++
				assert(t, rel.ids[id], "%s cites docs/reliability.md %s, which it does not define (…%s…)", f.rel, id, window)
			}
			for _, pm := range promiseRe.FindAllStringSubmatch(window, -1) {
				for _, n := range number.FindAllString(pm[1], -1) {
					checkedIDs++
					assert(t, rel.promises[n], "%s cites docs/reliability.md promise %s, which it does not define (…%s…)", f.rel, n, window)
				}
			}
		}
	}
	require.Greater(t, checkedIDs, 40, "too few cited ids found; is the pattern right?")
	require.Greater(t, checkedSections, 10, "too few cited sections found; is the pattern right?")
}

// citedDoc is what a document defines that others cite: numbered promises, row and
// pitfall ids, and section headings.
type citedDoc struct {
	promises map[string]bool
	ids      map[string]bool
	headings []string // lower-cased
}

var (
	promiseDef = regexp.MustCompile(`(?m)^(\d+)\. \*\*`)
	rowDef     = regexp.MustCompile(`(?m)^\| ([A-Z]+\d+[a-z]?) \|`)
	pitfallDef = regexp.MustCompile(`(?m)^- \*\*([A-Z]+\d+)\.`)
	headingDef = regexp.MustCompile(`(?m)^#+ (.+)$`)
)

func parseCitedDoc(text string) *citedDoc {
	d := &citedDoc{promises: map[string]bool{}, ids: map[string]bool{}}
	for _, m := range promiseDef.FindAllStringSubmatch(text, -1) {
		d.promises[m[1]] = true
	}
	for _, re := range []*regexp.Regexp{rowDef, pitfallDef} {
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			d.ids[m[1]] = true
		}
	}
	for _, m := range headingDef.FindAllStringSubmatch(text, -1) {
		d.headings = append(d.headings, strings.ToLower(m[1]))
	}
	return d
}

// hasSection reports whether a heading contains name (a citation may shorten it:
// "Alerter, email" for "Alerter, email, observability").
func (d *citedDoc) hasSection(name string) bool {
	name = strings.ToLower(name)
	for _, h := range d.headings {
		if strings.Contains(h, name) {
			return true
		}
	}
	return false
}

// commentBreak is a line break plus the next line's indentation and comment marker, so
// that a citation wrapped across comment lines reads as one line.
var commentBreak = regexp.MustCompile(`[ \t]*\r?\n[ \t]*(?:(?://|#)[ \t]*)?`)

func joinCommentLines(s string) string { return commentBreak.ReplaceAllString(s, " ") }

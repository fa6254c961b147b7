package scheduler

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// sqlCalls are the calls that send SQL or open a transaction, on a store,
// a transaction, a *sql.DB or a pgx connection.
var sqlCalls = map[string]bool{
	"Exec": true, "Query": true, "QueryRow": true,
	"ExecContext": true, "QueryContext": true, "QueryRowContext": true,
	"Begin": true, "BeginTx": true, "Prepare": true,
	"write": true, "writeRC": true, "writeOne": true, "query": true, "queryRow": true,
}

// sqlText is how a string literal holding a statement (or the start of
// one) begins: SQL keywords are written in capitals here.
var sqlText = regexp.MustCompile(`\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|LISTEN|RETURNING)\b`)

// storeFields are the store's insides (its databases and PostgreSQL
// side), reached as x.st.<field> by code that goes around its operations.
var storeFields = map[string]bool{"pg": true, "rd": true, "wr": true}

// knownSQL lists the files outside the store that still issue SQL, until
// they are moved (TODO(#26)); the test fails when one stops doing so, so
// that the list only shrinks.
var knownSQL = map[string]bool{}

// TestSQLOnlyInStore checks the scheduler's layering (issue #26): SQL is
// sent, written and its transactions opened only in the store's files
// (store*.go), which offer typed operations to the handlers, the web view,
// the dispatcher and the replicas' feed.
func TestSQLOnlyInStore(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	offenders := map[string][]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || strings.HasPrefix(name, "store") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		if whys := sqlUses(fset, f); len(whys) > 0 {
			offenders[name] = whys
		}
	}
	for name, whys := range offenders {
		if !knownSQL[name] {
			t.Errorf("%s issues SQL outside the store (move it into a typed operation in a store_<subject>.go):\n\t%s", name, strings.Join(whys, "\n\t"))
		}
	}
	for name := range knownSQL {
		if _, ok := offenders[name]; !ok {
			t.Errorf("%s no longer issues SQL: drop it from knownSQL", name)
		}
	}
}

// sqlUses lists where f sends SQL, holds SQL text or reaches into the
// store.
func sqlUses(fset *token.FileSet, f *ast.File) []string {
	var out []string
	at := func(n ast.Node, what string) {
		out = append(out, fset.Position(n.Pos()).String()+": "+what)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CallExpr:
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sqlCalls[sel.Sel.Name] && (len(n.Args) > 0 || sel.Sel.Name == "Begin") {
				at(n, "call of "+sel.Sel.Name)
			}
		case *ast.BasicLit:
			if n.Kind != token.STRING {
				break
			}
			if s, err := strconv.Unquote(n.Value); err == nil && sqlText.MatchString(s) {
				at(n, "SQL text "+strconv.Quote(firstLine(s)))
			}
		case *ast.SelectorExpr:
			if x, ok := n.X.(*ast.SelectorExpr); ok && x.Sel.Name == "st" && storeFields[n.Sel.Name] {
				at(n, "the store's field "+n.Sel.Name)
			}
		}
		return true
	})
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// TestSQLRuleCatches checks that the rule sees each way of issuing SQL, so
// that the test above cannot pass by looking at nothing.
func TestSQLRuleCatches(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"exec", `tx.Exec("x", 1)`},
		{"query", `s.st.query(ctx, q)`},
		{"write", `s.st.writeRC(ctx, fn)`},
		{"begin", `db.BeginTx(ctx, nil)`},
		{"text", `_ = "SELECT 1"`},
		{"returning", `_ = " RETURNING id"`},
		{"field", `_ = s.st.pg`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, "x.go", "package x\nfunc f() {\n"+tc.src+"\n}\n", 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(sqlUses(fset, f)) != 1 {
				t.Fatalf("%s: not seen once: %v", tc.src, sqlUses(fset, f))
			}
		})
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "x.go", "package x\nfunc f() { _ = r.URL.Query(); _ = \"select a host\" }\n", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := sqlUses(fset, f); !slices.Equal(got, nil) {
		t.Fatalf("false positives: %v", got)
	}
}

package weave

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weavemesh/weave/internal/logx"
)

// logKeys is the log vocabulary: the values of the logx.Key* constants, read from
// internal/logx so that the constants stay the one list.
func logKeys(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), filepath.Join("internal", "logx", "keys.go"), nil, 0)
	if err != nil {
		t.Fatalf("parse the logx keys: %v", err)
	}
	keys := map[string]string{} // constant name -> key
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "Key") || i >= len(vs.Values) {
					continue
				}
				lit, ok := vs.Values[i].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					t.Fatalf("logx.%s is not a string literal", n.Name)
				}
				v, _ := strconv.Unquote(lit.Value)
				keys[n.Name] = v
			}
		}
	}
	if len(keys) == 0 {
		t.Fatal("no logx.Key* constants found")
	}
	return keys
}

// TestLogKeysDocumented: every key of the vocabulary is explained in docs/LOGGING.md, and
// logx.Keys (what the tests' check handler allows) lists exactly the constants.
func TestLogKeysDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("docs", "LOGGING.md"))
	if err != nil {
		t.Fatal(err)
	}
	keys := logKeys(t)
	for name, key := range keys {
		if !strings.Contains(string(doc), "`"+key+"`") {
			t.Errorf("logx.%s (%q) is not in docs/LOGGING.md", name, key)
		}
		if !slices.Contains(logx.Keys(), key) {
			t.Errorf("logx.Keys() lacks logx.%s", name)
		}
	}
	if len(logx.Keys()) != len(keys) {
		t.Errorf("logx.Keys() has %d keys, keys.go declares %d", len(logx.Keys()), len(keys))
	}
}

// TestLogKeys is a vet-style check over every non-test Go file: the keys of slog calls
// (Info/Warn/Error/Debug[Context], Log, With, slog.String/Int/.../Group, logx.Limiter.Log)
// must be logx.Key* constants, so that one vocabulary (docs/LOGGING.md) covers all logs,
// including lines no test exercises; and messages carry no "component: " prefix (that is
// what the component key is for).
func TestLogKeys(t *testing.T) {
	keys := logKeys(t)
	var problems []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parse %s: %w", path, err)
		}
		problems = append(problems, checkLogCalls(fset, f, keys)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}

func TestLogKeysCheckerCatches(t *testing.T) {
	src := `package p
import ("log/slog"; "github.com/weavemesh/weave/internal/logx")
func f(log *slog.Logger, limiter *logx.Limiter, k string, args ...any) {
	log.Info("ok", logx.KeyPeer, 1, slog.String(logx.KeyErr, "x"))
	log.Info("bad literal", "remote", 1)
	log.Warn("fastdp: prefixed", logx.KeyErr, 1)
	log.With(logx.KeyPeer, 1, "peer_name", 2)
	log.Log(nil, 0, "bad attr", slog.Int("count", 1))
	limiter.Log(0, "k", "bad limited", k, 1)
	slog.Info("bad group", slog.Group("grp", logx.KeyPeer, 1))
	log.Debug("ok spread", logx.KeyPeer, 1, args...)
	built := []any{"sleeve", 1}
	log.Info("bad spread", built...)
}`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := checkLogCalls(fset, f, map[string]string{"KeyPeer": "peer", "KeyErr": "err"})
	want := []string{`"remote"`, `"fastdp: prefixed"`, `"peer_name"`, `"count"`, `k`, `"grp"`, `built...`}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i, w := range want {
		if !strings.Contains(got[i], w) {
			t.Errorf("problem %d = %q, want it to name %s", i, got[i], w)
		}
	}
}

// msgPrefix matches a message that starts with a component name ("fastdp: ...").
var msgPrefix = regexp.MustCompile(`^[a-z][a-z0-9_-]*: `)

// loggerish: without type information, a receiver is a logger if its name says so
// (log, d.log, cfg.Logger, refuseLog, testLogger(), a limiter); the project names them that way.
func loggerish(x ast.Expr) bool {
	var name string
	switch e := x.(type) {
	case *ast.Ident:
		name = e.Name
	case *ast.SelectorExpr:
		name = e.Sel.Name
	case *ast.CallExpr:
		return loggerish(e.Fun)
	default:
		return false
	}
	name = strings.ToLower(name)
	return strings.Contains(name, "log") || strings.Contains(name, "limiter")
}

// slogAttrCtors take a key first.
var slogAttrCtors = []string{"String", "Int", "Int64", "Uint64", "Float64", "Bool", "Time", "Duration", "Any", "Group"}

func checkLogCalls(fset *token.FileSet, f *ast.File, keys map[string]string) []string {
	isKeyConst := func(e ast.Expr) bool {
		switch e := e.(type) {
		case *ast.SelectorExpr: // logx.KeyX
			pkg, ok := e.X.(*ast.Ident)
			_, known := keys[e.Sel.Name]
			return ok && pkg.Name == "logx" && known
		case *ast.Ident: // KeyX inside package logx
			_, known := keys[e.Name]
			return f.Name.Name == "logx" && known
		}
		return false
	}
	isSlogCall := func(e ast.Expr) (string, bool) {
		c, ok := e.(*ast.CallExpr)
		if !ok {
			return "", false
		}
		sel, ok := c.Fun.(*ast.SelectorExpr)
		if !ok {
			return "", false
		}
		pkg, ok := sel.X.(*ast.Ident)
		return sel.Sel.Name, ok && pkg.Name == "slog"
	}
	variadic := map[string]bool{} // names of variadic parameters in this file
	ast.Inspect(f, func(n ast.Node) bool {
		var ft *ast.FuncType
		switch fn := n.(type) {
		case *ast.FuncDecl:
			ft = fn.Type
		case *ast.FuncLit:
			ft = fn.Type
		default:
			return true
		}
		if l := ft.Params.List; len(l) > 0 {
			if _, ok := l[len(l)-1].Type.(*ast.Ellipsis); ok {
				for _, name := range l[len(l)-1].Names {
					variadic[name.Name] = true
				}
			}
		}
		return true
	})
	var problems []string
	report := func(n ast.Node, format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%s: %s", fset.Position(n.Pos()), fmt.Sprintf(format, args...)))
	}
	exprString := func(e ast.Expr) string {
		if lit, ok := e.(*ast.BasicLit); ok {
			return lit.Value
		}
		if id, ok := e.(*ast.Ident); ok {
			return id.Name
		}
		return fmt.Sprintf("%T", e)
	}
	// checkKVs checks key/value pairs (and slog.Attr values) from args[from:].
	checkKVs := func(call *ast.CallExpr, from int) {
		args := call.Args
		for i := from; i < len(args); {
			if call.Ellipsis.IsValid() && i == len(args)-1 {
				// A wrapper's own variadic parameter is checked at the wrapper's callers;
				// pairs built at run time cannot be checked at all.
				if id, ok := args[i].(*ast.Ident); !ok || !variadic[id.Name] {
					report(args[i], "log keys built at run time (%s...) cannot be checked: pass key/value pairs at the call", exprString(args[i]))
				}
				return
			}
			if name, ok := isSlogCall(args[i]); ok && slices.Contains(slogAttrCtors, name) {
				i++ // an Attr: checked on its own
				continue
			}
			if !isKeyConst(args[i]) {
				report(args[i], "log key %s is not a logx.Key* constant (add it to internal/logx/keys.go and docs/LOGGING.md, or use an existing key)", exprString(args[i]))
			}
			i += 2
		}
	}
	checkMsg := func(call *ast.CallExpr, i int) {
		if i >= len(call.Args) {
			return
		}
		if lit, ok := call.Args[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
			if s, _ := strconv.Unquote(lit.Value); msgPrefix.MatchString(s) {
				report(lit, "log message %s has a prefix that duplicates the component key", lit.Value)
			}
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if name, ok := isSlogCall(call); ok {
			switch {
			case slices.Contains(slogAttrCtors, name):
				if len(call.Args) > 0 && !isKeyConst(call.Args[0]) {
					report(call.Args[0], "log key %s is not a logx.Key* constant (add it to internal/logx/keys.go and docs/LOGGING.md, or use an existing key)", exprString(call.Args[0]))
				}
				if name == "Group" {
					checkKVs(call, 1)
				}
			case name == "Info" || name == "Warn" || name == "Error" || name == "Debug":
				checkMsg(call, 0)
				checkKVs(call, 1)
			case strings.HasSuffix(name, "Context"):
				checkMsg(call, 1)
				checkKVs(call, 2)
			case name == "Log" || name == "LogAttrs":
				checkMsg(call, 2)
				checkKVs(call, 3)
			case name == "With":
				checkKVs(call, 0)
			}
			return true
		}
		if !loggerish(sel.X) {
			return true
		}
		switch name := sel.Sel.Name; {
		case name == "Info" || name == "Warn" || name == "Error" || name == "Debug":
			checkMsg(call, 0)
			checkKVs(call, 1)
		case name == "InfoContext" || name == "WarnContext" || name == "ErrorContext" || name == "DebugContext":
			checkMsg(call, 1)
			checkKVs(call, 2)
		case name == "Log" || name == "LogAttrs":
			// slog.Logger.Log(ctx, level, msg, kv...) and logx.Limiter.Log(level, key, msg,
			// kv...) both have the message at 2 and pairs from 3.
			checkMsg(call, 2)
			checkKVs(call, 3)
		case name == "With":
			checkKVs(call, 0)
		}
		return true
	})
	return problems
}

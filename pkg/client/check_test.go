package client

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// The SDK is a module of its own whose only requirements are what it runs with: its
// tests use these few checks, spelled like testify's, instead of requiring testify.
// assert reports and goes on (t.Errorf); require stops the test (t.Fatalf).
var (
	assert  = checks{fatal: false}
	require = checks{fatal: true}
)

type checks struct{ fatal bool }

func (c checks) fail(t testing.TB, msgAndArgs []any, format string, args ...any) bool {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if len(msgAndArgs) > 0 {
		if f, ok := msgAndArgs[0].(string); ok && len(msgAndArgs) > 1 {
			msg += ": " + fmt.Sprintf(f, msgAndArgs[1:]...)
		} else {
			msg += ": " + fmt.Sprint(msgAndArgs...)
		}
	}
	if c.fatal {
		t.Fatal(msg)
	}
	t.Error(msg)
	return false
}

func (c checks) Equal(t testing.TB, want, got any, msgAndArgs ...any) bool {
	t.Helper()
	if bw, ok := want.([]byte); ok {
		if bg, ok := got.([]byte); ok && string(bw) == string(bg) {
			return true
		}
	}
	if reflect.DeepEqual(want, got) {
		return true
	}
	return c.fail(t, msgAndArgs, "not equal:\n want: %#v\n  got: %#v", want, got)
}

// EqualValues is Equal after converting got to want's type when it can be.
func (c checks) EqualValues(t testing.TB, want, got any, msgAndArgs ...any) bool {
	t.Helper()
	if reflect.DeepEqual(want, got) {
		return true
	}
	wv, gv := reflect.ValueOf(want), reflect.ValueOf(got)
	if wv.IsValid() && gv.IsValid() && gv.Type().ConvertibleTo(wv.Type()) &&
		reflect.DeepEqual(want, gv.Convert(wv.Type()).Interface()) {
		return true
	}
	return c.fail(t, msgAndArgs, "not equal values:\n want: %#v\n  got: %#v", want, got)
}

func (c checks) NoError(t testing.TB, err error, msgAndArgs ...any) bool {
	t.Helper()
	if err == nil {
		return true
	}
	return c.fail(t, msgAndArgs, "unexpected error: %v", err)
}

func (c checks) Error(t testing.TB, err error, msgAndArgs ...any) bool {
	t.Helper()
	if err != nil {
		return true
	}
	return c.fail(t, msgAndArgs, "an error was expected")
}

func (c checks) ErrorIs(t testing.TB, err, target error, msgAndArgs ...any) bool {
	t.Helper()
	if errors.Is(err, target) {
		return true
	}
	return c.fail(t, msgAndArgs, "error %v is not %v", err, target)
}

func (c checks) EqualError(t testing.TB, err error, want string, msgAndArgs ...any) bool {
	t.Helper()
	if err != nil && err.Error() == want {
		return true
	}
	return c.fail(t, msgAndArgs, "error:\n want: %q\n  got: %v", want, err)
}

func (c checks) True(t testing.TB, v bool, msgAndArgs ...any) bool {
	t.Helper()
	if v {
		return true
	}
	return c.fail(t, msgAndArgs, "should be true")
}

func (c checks) False(t testing.TB, v bool, msgAndArgs ...any) bool {
	t.Helper()
	if !v {
		return true
	}
	return c.fail(t, msgAndArgs, "should be false")
}

func (c checks) Len(t testing.TB, v any, n int, msgAndArgs ...any) bool {
	t.Helper()
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map, reflect.String, reflect.Chan:
		if rv.Len() == n {
			return true
		}
		return c.fail(t, msgAndArgs, "length %d, want %d: %#v", rv.Len(), n, v)
	}
	return c.fail(t, msgAndArgs, "%T has no length", v)
}

func (c checks) Empty(t testing.TB, v any, msgAndArgs ...any) bool {
	t.Helper()
	rv := reflect.ValueOf(v)
	if !rv.IsValid() || rv.IsZero() {
		return true
	}
	switch rv.Kind() {
	case reflect.Slice, reflect.Array, reflect.Map, reflect.String, reflect.Chan:
		if rv.Len() == 0 {
			return true
		}
	}
	return c.fail(t, msgAndArgs, "should be empty: %#v", v)
}

func (c checks) Zero(t testing.TB, v any, msgAndArgs ...any) bool {
	t.Helper()
	if rv := reflect.ValueOf(v); !rv.IsValid() || rv.IsZero() {
		return true
	}
	return c.fail(t, msgAndArgs, "should be zero: %#v", v)
}

func (c checks) Contains(t testing.TB, s, sub any, msgAndArgs ...any) bool {
	t.Helper()
	if contains(s, sub) {
		return true
	}
	return c.fail(t, msgAndArgs, "%#v does not contain %#v", s, sub)
}

func (c checks) NotContains(t testing.TB, s, sub any, msgAndArgs ...any) bool {
	t.Helper()
	if !contains(s, sub) {
		return true
	}
	return c.fail(t, msgAndArgs, "%#v contains %#v", s, sub)
}

func contains(s, sub any) bool {
	if str, ok := s.(string); ok {
		return strings.Contains(str, fmt.Sprint(sub))
	}
	rv := reflect.ValueOf(s)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		for i := range rv.Len() {
			if reflect.DeepEqual(rv.Index(i).Interface(), sub) {
				return true
			}
		}
	case reflect.Map:
		return rv.MapIndex(reflect.ValueOf(sub)).IsValid()
	}
	return false
}

// number is v as a float64 for the ordering checks; ok is false for a non-number.
func number(v any) (float64, bool) {
	rv := reflect.ValueOf(v)
	switch {
	case rv.CanInt():
		return float64(rv.Int()), true
	case rv.CanUint():
		return float64(rv.Uint()), true
	case rv.CanFloat():
		return rv.Float(), true
	}
	return 0, false
}

func (c checks) compare(t testing.TB, a, b any, ok func(x, y float64) bool, op string, msgAndArgs []any) bool {
	t.Helper()
	x, okA := number(a)
	y, okB := number(b)
	if okA && okB && ok(x, y) {
		return true
	}
	return c.fail(t, msgAndArgs, "expected %v %s %v", a, op, b)
}

func (c checks) GreaterOrEqual(t testing.TB, a, b any, msgAndArgs ...any) bool {
	t.Helper()
	return c.compare(t, a, b, func(x, y float64) bool { return x >= y }, ">=", msgAndArgs)
}

func (c checks) LessOrEqual(t testing.TB, a, b any, msgAndArgs ...any) bool {
	t.Helper()
	return c.compare(t, a, b, func(x, y float64) bool { return x <= y }, "<=", msgAndArgs)
}

func (c checks) Positive(t testing.TB, a any, msgAndArgs ...any) bool {
	t.Helper()
	return c.compare(t, a, 0, func(x, _ float64) bool { return x > 0 }, ">", msgAndArgs)
}

// TestChecksFail makes sure the checks above fail when they should: every test of the
// package leans on them.
func TestChecksFail(t *testing.T) {
	for name, bad := range map[string]func(tb testing.TB) bool{
		"Equal":          func(tb testing.TB) bool { return assert.Equal(tb, 1, 2) },
		"EqualTypes":     func(tb testing.TB) bool { return assert.Equal(tb, int64(1), 1) },
		"EqualValues":    func(tb testing.TB) bool { return assert.EqualValues(tb, 1, "1") },
		"NoError":        func(tb testing.TB) bool { return assert.NoError(tb, errors.New("x")) },
		"Error":          func(tb testing.TB) bool { return assert.Error(tb, nil) },
		"ErrorIs":        func(tb testing.TB) bool { return assert.ErrorIs(tb, errors.New("x"), ErrClosed) },
		"EqualError":     func(tb testing.TB) bool { return assert.EqualError(tb, errors.New("x"), "y") },
		"True":           func(tb testing.TB) bool { return assert.True(tb, false) },
		"False":          func(tb testing.TB) bool { return assert.False(tb, true) },
		"Len":            func(tb testing.TB) bool { return assert.Len(tb, []int{1}, 2) },
		"Empty":          func(tb testing.TB) bool { return assert.Empty(tb, []int{1}) },
		"Zero":           func(tb testing.TB) bool { return assert.Zero(tb, 1) },
		"Contains":       func(tb testing.TB) bool { return assert.Contains(tb, "abc", "d") },
		"NotContains":    func(tb testing.TB) bool { return assert.NotContains(tb, []string{"a"}, "a") },
		"GreaterOrEqual": func(tb testing.TB) bool { return assert.GreaterOrEqual(tb, 1, 2) },
		"LessOrEqual":    func(tb testing.TB) bool { return assert.LessOrEqual(tb, 2.5, 2) },
		"Positive":       func(tb testing.TB) bool { return assert.Positive(tb, 0) },
	} {
		rec := &recorder{TB: t}
		if bad(rec) || !rec.failed {
			t.Errorf("%s: did not fail", name)
		}
	}
	for name, good := range map[string]func(tb testing.TB) bool{
		"Equal": func(tb testing.TB) bool {
			return assert.Equal(tb, map[string]any{"a": []any{1.0}}, map[string]any{"a": []any{1.0}})
		},
		"EqualValues":    func(tb testing.TB) bool { return assert.EqualValues(tb, uint64(3), 3) },
		"Len":            func(tb testing.TB) bool { return assert.Len(tb, "ab", 2) },
		"Contains":       func(tb testing.TB) bool { return assert.Contains(tb, map[string]int{"k": 1}, "k") },
		"GreaterOrEqual": func(tb testing.TB) bool { return assert.GreaterOrEqual(tb, uint64(2), 2) },
	} {
		rec := &recorder{TB: t}
		if !good(rec) || rec.failed {
			t.Errorf("%s: failed on good input", name)
		}
	}
}

// recorder is a testing.TB that records a failure instead of failing the test.
type recorder struct {
	testing.TB
	failed bool
}

func (r *recorder) Helper()               {}
func (r *recorder) Error(...any)          { r.failed = true }
func (r *recorder) Errorf(string, ...any) { r.failed = true }
func (r *recorder) Fatal(...any)          { r.failed = true }
func (r *recorder) Fatalf(string, ...any) { r.failed = true }

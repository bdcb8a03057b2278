package topic

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseCondition(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr   string
		topics []string // nil: refused
	}{
		{"'news' in topics", []string{"news"}},
		{"'TopicA' in topics && ('TopicB' in topics || 'TopicC' in topics)", []string{"TopicA", "TopicB", "TopicC"}},
		{"!('a' in topics) && 'b-c_d.e~f%20' in topics", []string{"a", "b-c_d.e~f%20"}},
		{"'a' in topics&&'b' in topics", []string{"a", "b"}},
		{"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics", []string{"a", "b", "c", "d", "e"}},
		{"'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics", nil},
		{"", nil},
		{"   ", nil},
		{"news", nil},
		{"\"news\" in topics", nil},
		{"'news' in topic", nil},
		{"'news' intopics", nil},
		{"'ne ws' in topics", nil},
		{"'news in topics", nil},
		{"('a' in topics", nil},
		{"'a' in topics)", nil},
		{"'a' in topics &&", nil},
		{"'a' in topics & 'b' in topics", nil},
		{"''" + " in topics", nil},
		{strings.Repeat("(", 40) + "'a' in topics" + strings.Repeat(")", 40), nil},
	}
	for _, tt := range tests {
		got, err := ParseCondition(tt.expr)
		if tt.topics == nil {
			if err == nil {
				t.Errorf("ParseCondition(%q) = %v, want an error", tt.expr, got)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCondition(%q): %v", tt.expr, err)
			continue
		}
		if diff := cmp.Diff(tt.topics, got); diff != "" {
			t.Errorf("ParseCondition(%q) (-want +got):\n%s", tt.expr, diff)
		}
	}
}

func TestKeys(t *testing.T) {
	t.Parallel()
	for _, k := range []struct{ key, name, cond string }{
		{Key("news"), "news", ""},
		{ConditionKey("'a' in topics"), "", "'a' in topics"},
	} {
		name, cond, ok := FromKey(k.key)
		if !ok || !IsKey(k.key) || name != k.name || cond != k.cond {
			t.Errorf("FromKey(%q) = %q, %q, %t", k.key, name, cond, ok)
		}
	}
	if _, _, ok := FromKey("dGVzdA:APA91b"); ok || IsKey("dGVzdA:APA91b") {
		t.Error("a registration token was taken for a key")
	}
	if ValidName("a/b") || ValidName("") || !ValidName("a-b_c.d~e%f") {
		t.Error("ValidName disagrees with [a-zA-Z0-9-_.~%]+")
	}
}

func FuzzParseCondition(f *testing.F) {
	f.Add("'TopicA' in topics && ('TopicB' in topics || !('TopicC' in topics))")
	f.Fuzz(func(t *testing.T, expr string) {
		topics, err := ParseCondition(expr)
		if err == nil && (len(topics) == 0 || len(topics) > MaxConditionTopics) {
			t.Errorf("ParseCondition(%q) accepted %d topics", expr, len(topics))
		}
	})
}

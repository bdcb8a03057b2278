// Package topic holds FCM's rules for topic names and condition expressions, and the keys
// notify records a topic or condition send under. The producer validates with it, the FCM
// client recognises the keys, and the emulator checks what it receives with the same rules.
package topic

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxConditionTopics is the most topics FCM accepts in one condition.
const MaxConditionTopics = 5

// Key prefixes. FCM registration tokens never start with either (the legacy API used the
// same "/topics/" form for a topic in its "to" field), so a key never collides with a token.
const (
	TopicPrefix     = "/topics/"
	ConditionPrefix = "condition:"
)

var namePattern = regexp.MustCompile(`^[a-zA-Z0-9\-_.~%]+$`)

// ValidName reports whether name is a topic name FCM accepts: [a-zA-Z0-9-_.~%]+.
func ValidName(name string) bool { return namePattern.MatchString(name) }

// Key is the key a send to topic name is recorded under (deliveries.token).
func Key(name string) string { return TopicPrefix + name }

// ConditionKey is the key a send to a condition is recorded under (deliveries.token).
func ConditionKey(expr string) string { return ConditionPrefix + expr }

// IsKey reports whether s is a topic or condition key rather than a registration token.
func IsKey(s string) bool {
	return strings.HasPrefix(s, TopicPrefix) || strings.HasPrefix(s, ConditionPrefix)
}

// FromKey returns the topic name or the condition a key stands for (one of them is set),
// or ok false when s is not a key.
func FromKey(s string) (name, condition string, ok bool) {
	if n, found := strings.CutPrefix(s, TopicPrefix); found {
		return n, "", true
	}
	if c, found := strings.CutPrefix(s, ConditionPrefix); found {
		return "", c, true
	}
	return "", "", false
}

// ParseCondition checks an FCM condition expression and returns the topics it names, in
// order. The grammar is FCM's:
//
//	expr   = term { ("&&" | "||") term }
//	term   = "!" term | "(" expr ")" | "'" name "'" "in" "topics"
//
// with spaces allowed between tokens, at most MaxConditionTopics topic references, and every
// name a valid topic name (ValidName).
func ParseCondition(expr string) ([]string, error) {
	p := &parser{s: expr}
	if err := p.expr(0); err != nil {
		return nil, err
	}
	p.space()
	if p.i < len(p.s) {
		return nil, fmt.Errorf("unexpected %q at offset %d", p.rest(), p.i)
	}
	if len(p.topics) > MaxConditionTopics {
		return nil, fmt.Errorf("names %d topics; FCM accepts at most %d", len(p.topics), MaxConditionTopics)
	}
	return p.topics, nil
}

var errEmpty = errors.New("is empty")

type parser struct {
	s      string
	i      int
	topics []string
}

// maxDepth bounds nesting, so that a hostile expression cannot exhaust the stack.
const maxDepth = 32

func (p *parser) space() {
	for p.i < len(p.s) && p.s[p.i] == ' ' {
		p.i++
	}
}

func (p *parser) rest() string {
	r := p.s[p.i:]
	if len(r) > 16 {
		r = r[:16] + "…"
	}
	return r
}

func (p *parser) eat(tok string) bool {
	p.space()
	if strings.HasPrefix(p.s[p.i:], tok) {
		p.i += len(tok)
		return true
	}
	return false
}

func (p *parser) expr(depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("nests deeper than %d parentheses", maxDepth)
	}
	if err := p.term(depth); err != nil {
		return err
	}
	for p.eat("&&") || p.eat("||") {
		if err := p.term(depth); err != nil {
			return err
		}
	}
	return nil
}

func (p *parser) term(depth int) error {
	p.space()
	switch {
	case p.i >= len(p.s):
		if p.i == 0 {
			return errEmpty
		}
		return fmt.Errorf("ends where a topic test was expected")
	case p.eat("!"):
		return p.term(depth + 1)
	case p.eat("("):
		if err := p.expr(depth + 1); err != nil {
			return err
		}
		if !p.eat(")") {
			return fmt.Errorf("missing ')' at offset %d", p.i)
		}
		return nil
	case p.eat("'"):
		end := strings.IndexByte(p.s[p.i:], '\'')
		if end < 0 {
			return fmt.Errorf("unterminated topic name at offset %d", p.i)
		}
		name := p.s[p.i : p.i+end]
		if !ValidName(name) {
			return fmt.Errorf("topic name %q: must match [a-zA-Z0-9-_.~%%]+", name)
		}
		p.i += end + 1
		// "in" and "topics" are words: "'a' intopics" is not FCM syntax.
		if !p.eat("in ") || !p.eat("topics") {
			return fmt.Errorf("expected \"in topics\" after '%s' at offset %d", name, p.i)
		}
		p.topics = append(p.topics, name)
		return nil
	}
	return fmt.Errorf("unexpected %q at offset %d: want 'topic' in topics, '!' or '('", p.rest(), p.i)
}

package remote

import (
	"fmt"
	"strings"
)

// Quote makes arg one literal word for a POSIX shell (sh, bash, dash,
// zsh): it is wrapped in single quotes, and each single quote inside
// becomes quote, backslash, quote, quote:
//
//	it's  ->  'it'\''s'
//
// One exception, so that paths under the remote home work: a leading "~/"
// stays outside the quotes and the shell expands it to $HOME; the rest is
// literal.
func Quote(arg string) string {
	if rest, ok := strings.CutPrefix(arg, "~/"); ok {
		return "~/" + quoteLiteral(rest)
	}
	return quoteLiteral(arg)
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// QuoteArgs quotes every argument and joins them with spaces: a command
// line that runs argv[0] with exactly these arguments.
func QuoteArgs(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = Quote(a)
	}
	return strings.Join(q, " ")
}

// commandLine checks argv and quotes it. NUL cannot travel in an SSH
// command string and newlines are refused outright: a line break that a
// caller did not mean is how injections begin.
func commandLine(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", fmt.Errorf("empty command: %w", ErrUnsafeArgument)
	}
	for i, a := range argv {
		switch {
		case strings.ContainsRune(a, 0):
			return "", fmt.Errorf("argument %d %q contains a NUL: %w", i, a, ErrUnsafeArgument)
		case strings.ContainsAny(a, "\n\r"):
			return "", fmt.Errorf("argument %d %q contains a newline: %w", i, a, ErrUnsafeArgument)
		}
	}
	return QuoteArgs(argv), nil
}

package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable returns s as it may be shown on a terminal: unchanged when it
// holds only printable characters, else with control characters (newlines,
// ANSI escapes, NUL), invalid UTF-8 and other non-graphic runes escaped as
// Go escapes them. Names and file names that come from users or hosts go
// through it before they are printed, so that none can forge a line or
// drive the terminal.
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsGraphic(r) && r != ' ' {
			q := strconv.QuoteToGraphic(s)
			return q[1 : len(q)-1]
		}
	}
	return s
}

// printableText is printable for text that may span lines (an error made
// of several): newlines stay, every other control character is escaped.
func printableText(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	return strings.Join(lines, "\n")
}

// Package reply writes the queen's HTTP answers: JSON bodies and rbee's
// error shape ({"error":{"code","message","hint"}}). The control routes of
// the queen, the fleet and the front door answer through it, so every room
// speaks the same wire shape.
package reply

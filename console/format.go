package console

import (
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/buildfleet/buildfleet/internal/digest"
)

// funcs are the template functions of every page.
var funcs = template.FuncMap{
	"ago":       ago,
	"dur":       humanDuration,
	"iso":       iso,
	"clock":     func(t time.Time) string { return localClock(t) },
	"bytes":     humanBytes,
	"short":     shortDigest,
	"clip":      clip,
	"actionURL": actionURL,
	"buildURL":  buildURL,
	"workerURL": func(bot string) string { return "/console/workers/" + url.PathEscape(bot) },
	"blobURL":   blobURL,
	"inputURL":  inputURL,
	"instance":  instanceLabel,
	"platform":  platformLabel,
	"pct":       func(part, whole int) int { return percent(part, whole) },
	"ts":        func(t *timestamppb.Timestamp) time.Time { return tsTime(t) },
	"add":       func(a, b int) int { return a + b },
	"seconds":   func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) },
	"listing":   func(ref actionRef, d *dirListing) listingView { return listingView{Ref: ref, Dir: d} },
	"digestOf":  digestOf,
}

// listingView is what the dirlisting template shows: a directory of an action's input root.
type listingView struct {
	Ref actionRef
	Dir *dirListing
}

// digestOf converts a proto digest (the zero digest when invalid).
func digestOf(d *repb.Digest) digest.Digest {
	out, _ := digest.FromProto(d)
	return out
}

// ago renders how long before now t was ("12s ago"), "never" for a zero time.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return humanDuration(d) + " ago"
}

// humanDuration renders d compactly: "850ms", "12.3s", "4m 05s", "2h 03m".
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm %02ds", int(d.Minutes()), int(d.Seconds())%60)
	default:
		return fmt.Sprintf("%dh %02dm", int(d.Hours()), int(d.Minutes())%60)
	}
}

// iso renders t for data attributes read by console.js ("" for a zero time).
func iso(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// localClock renders t as "15:04:05 UTC" ("—" for a zero time).
func localClock(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("15:04:05") + " UTC"
}

// humanBytes renders n bytes as "512 B", "3.2 KiB", "1.5 MiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// shortDigest renders a digest's first 12 hex digits.
func shortDigest(d digest.Digest) string {
	if len(d.Hash) > 12 {
		return d.Hash[:12]
	}
	return d.Hash
}

// maxClipRunes is how much of a client-chosen id (a tool invocation id) a table cell shows.
const maxClipRunes = 64

// clip shortens s to maxClipRunes runes, the last one "…", so that a long id sent by one client
// does not widen a table for everyone (the whole id goes in the cell's title and link).
func clip(s string) string {
	if utf8.RuneCountInString(s) <= maxClipRunes {
		return s
	}
	return string([]rune(s)[:maxClipRunes-1]) + "…"
}

// withInstance appends ?instance= to u when instance is not empty.
func withInstance(u, instance string) string {
	if instance == "" {
		return u
	}
	return u + "?instance=" + url.QueryEscape(instance)
}

// actionURL is the stable address of an action's page.
func actionURL(instance string, d digest.Digest) string {
	return withInstance(fmt.Sprintf("/console/actions/%s/%d", d.Hash, d.Size), instance)
}

// buildURL is the address of a build's page ("-" stands for executions without an id).
func buildURL(id string) string {
	if id == "" {
		id = "-"
	}
	return "/console/builds/" + url.PathEscape(id)
}

// blobURL is the address of a blob's contents view, named name for the reader.
func blobURL(instance string, d digest.Digest, name string) string {
	q := url.Values{}
	if instance != "" {
		q.Set("instance", instance)
	}
	if name != "" {
		q.Set("name", name)
	}
	u := fmt.Sprintf("/console/blobs/%s/%d", d.Hash, d.Size)
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// inputURL is the address of a path in an action's input root ("" is the root).
func inputURL(instance string, action digest.Digest, path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return withInstance(fmt.Sprintf("/console/actions/%s/%d/input/%s", action.Hash, action.Size, strings.Join(parts, "/")), instance)
}

// instanceLabel renders an instance name, the empty one as "(default)".
func instanceLabel(instance string) string {
	if instance == "" {
		return "(default)"
	}
	return instance
}

// platformLabel renders a canonical platform, the empty one as "any".
func platformLabel(p string) string {
	if p == "" {
		return "any"
	}
	return strings.ReplaceAll(p, ",", ", ")
}

// percent returns part of whole in percent, 0 for an empty whole.
func percent(part, whole int) int {
	if whole <= 0 {
		return 0
	}
	return part * 100 / whole
}

// tsTime converts a proto timestamp, nil to the zero time.
func tsTime(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

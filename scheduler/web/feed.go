package web

import (
	"encoding/xml"
	"fmt"
	"net/url"
	"time"

	"github.com/kiln-build/kiln/api"
)

type atomLink struct {
	Href string `xml:"href,attr"`
	Rel  string `xml:"rel,attr,omitempty"`
	Type string `xml:"type,attr,omitempty"`
}

type atomEntry struct {
	Title   string   `xml:"title"`
	ID      string   `xml:"id"`
	Updated string   `xml:"updated"`
	Link    atomLink `xml:"link"`
	Summary string   `xml:"summary"`
}

type atomDoc struct {
	XMLName xml.Name   `xml:"http://www.w3.org/2005/Atom feed"`
	Title   string     `xml:"title"`
	ID      string     `xml:"id"`
	Updated string     `xml:"updated"`
	Links   []atomLink `xml:"link"`
	Author  struct {
		Name string `xml:"name"`
	} `xml:"author"`
	Entries []atomEntry `xml:"entry"`
}

// atomFeed is the Atom document of a job's failed runs. Entry IDs are the
// run pages' URLs, which never change.
func atomFeed(base, job string, runs []api.Run, now time.Time) ([]byte, error) {
	jobURL := base + "/jobs/" + url.PathEscape(job)
	d := atomDoc{Title: "kiln: failed runs of " + job, ID: jobURL + "/failed.atom", Updated: now.UTC().Format(time.RFC3339),
		Links: []atomLink{{Href: jobURL + "/failed.atom", Rel: "self", Type: "application/atom+xml"}, {Href: jobURL, Rel: "alternate", Type: "text/html"}}}
	d.Author.Name = "kiln"
	for _, r := range runs {
		when := r.Finished
		if when.IsZero() {
			when = r.Created
		}
		if d.Entries == nil {
			d.Updated = when.UTC().Format(time.RFC3339)
		}
		u := base + "/runs/" + r.ID
		sum := fmt.Sprintf("run %s of %s (revision %d) %s on %s, exit %s", r.ID, r.Job, r.Revision, r.State, r.Host, r.ExitText())
		if r.Error != "" {
			sum += ": " + r.Error
		}
		d.Entries = append(d.Entries, atomEntry{Title: fmt.Sprintf("%s run %s %s", r.Job, r.ID, r.State), ID: u,
			Updated: when.UTC().Format(time.RFC3339), Link: atomLink{Href: u, Rel: "alternate", Type: "text/html"}, Summary: sum})
	}
	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append([]byte(xml.Header), append(out, '\n')...), nil
}

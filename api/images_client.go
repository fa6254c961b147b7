package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// PublishImage records a new version of a server-held image whose blob
// was uploaded before (admin tokens only). The answer carries the
// version the server assigned.
func (c *Client) PublishImage(ctx context.Context, req PublishImageRequest) (*ImageVersion, error) {
	var out ImageVersion
	_, err := c.do(ctx, "POST", "/v1/images/"+esc(req.Version.Name)+"/versions", nil, req, &out)
	return &out, err
}

// ListImageVersions lists the server's image versions, of one image when
// name is not empty, newest last.
func (c *Client) ListImageVersions(ctx context.Context, name string) ([]ImageVersion, error) {
	var q url.Values
	if name != "" {
		q = url.Values{"name": {name}}
	}
	var out []ImageVersion
	_, err := c.do(ctx, "GET", "/v1/images", q, nil, &out)
	return out, err
}

// GetImageVersion returns one version's manifest; version 0 is the
// newest.
func (c *Client) GetImageVersion(ctx context.Context, name string, version int) (*ImageVersion, error) {
	var out ImageVersion
	_, err := c.do(ctx, "GET", "/v1/images/"+esc(name)+"/versions/"+strconv.Itoa(version), nil, nil, &out)
	return &out, err
}

// RemoveImageVersion removes a version (admin tokens only); it is refused
// (ErrConflict) while queued runs are pinned to it.
func (c *Client) RemoveImageVersion(ctx context.Context, name string, version int) error {
	_, err := c.do(ctx, "DELETE", "/v1/images/"+esc(name)+"/versions/"+strconv.Itoa(version), nil, nil, nil)
	return err
}

// DownloadBlobFrom writes the blob's bytes from offset on to w, for a
// download that resumes where an earlier one stopped. It does not verify
// the digest (the caller hashes the whole file); it returns how many bytes
// it wrote.
func (c *Client) DownloadBlobFrom(ctx context.Context, sha string, offset int64, w io.Writer) (int64, error) {
	req, err := c.newRequest(ctx, "GET", "/v1/blobs/"+esc(sha), nil, nil)
	if err != nil {
		return 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := c.send(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if offset > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		return 0, nil // the earlier download had every byte
	}
	if err := checkResponse(resp); err != nil {
		return 0, err
	}
	if offset > 0 && resp.StatusCode != http.StatusPartialContent {
		return 0, fmt.Errorf("blob %s: server ignored the range from %d (status %d)", sha, offset, resp.StatusCode)
	}
	return io.Copy(w, resp.Body)
}

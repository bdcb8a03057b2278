package outbox

import (
	"net/http"
	"net/url"
	"testing"

	"notify/pkg/rabbit"
	"notify/pkg/testenv"
)

// cleanupTopology deletes a test topology's queues and exchange through the management API.
func cleanupTopology(t *testing.T, _ string, topo rabbit.Topology) {
	base, err := url.Parse(testenv.ManagementURL(t))
	if err != nil {
		t.Log(err)
		return
	}
	pass, _ := base.User.Password()
	del := func(path string) {
		req, _ := http.NewRequest(http.MethodDelete, base.Scheme+"://"+base.Host+path, nil)
		req.SetBasicAuth(base.User.Username(), pass)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	for _, q := range topo.Queues() {
		del("/api/queues/%2F/" + url.PathEscape(q))
	}
	del("/api/exchanges/%2F/" + url.PathEscape(topo.Exchange()))
}

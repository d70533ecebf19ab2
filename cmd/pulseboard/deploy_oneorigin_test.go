package main_test

import (
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/pulseboard/pulseboard/pkg/clientip"
)

// One public origin in the documented deployments (issue 17 item 2): docker-compose.yml
// puts nginx with deploy/nginx/pulseboard.conf in front of the ingestor and the api, and
// deploy/k8s an Ingress. These checks read the files; oneorigin_test.go runs the nginx
// configuration itself.

// nginxConfPath is the configuration docker-compose.yml mounts into its nginx.
const nginxConfPath = "deploy/nginx/pulseboard.conf"

// nginxConf is what the checks need from deploy/nginx/pulseboard.conf.
type nginxConf struct {
	text              string
	listen            string // the port of its listen directive
	ingestor, api     string // host:port of the two upstreams
	ingestorLocations []string
	apiLocations      []string
}

var (
	nginxListenRe   = regexp.MustCompile(`(?m)^\s*listen (\d+);$`)
	nginxUpstreamRe = regexp.MustCompile(`(?m)^\s*set \$pulseboard_(ingestor|api) ([a-z0-9.-]+:\d+);$`)
	nginxLocationRe = regexp.MustCompile(`(?ms)^\s*location ((?:= )?\S+) \{\s*proxy_pass http://\$pulseboard_(ingestor|api);`)
)

func readNginxConf(t *testing.T) nginxConf {
	t.Helper()
	c := nginxConf{text: string(readRepoFile(t, nginxConfPath))}
	listens := nginxListenRe.FindAllStringSubmatch(c.text, -1)
	require.Len(t, listens, 1, "%s: one listen directive with a port", nginxConfPath)
	c.listen = listens[0][1]
	for _, m := range nginxUpstreamRe.FindAllStringSubmatch(c.text, -1) {
		switch m[1] {
		case "ingestor":
			c.ingestor = m[2]
		case "api":
			c.api = m[2]
		}
	}
	require.NotEmpty(t, c.ingestor, "%s: no `set $pulseboard_ingestor host:port;`", nginxConfPath)
	require.NotEmpty(t, c.api, "%s: no `set $pulseboard_api host:port;`", nginxConfPath)
	for _, m := range nginxLocationRe.FindAllStringSubmatch(c.text, -1) {
		if m[2] == "ingestor" {
			c.ingestorLocations = append(c.ingestorLocations, m[1])
		} else {
			c.apiLocations = append(c.apiLocations, m[1])
		}
	}
	require.ElementsMatch(t, []string{"= /ingest", "/ingest/", "/analytics/"}, c.ingestorLocations, "%s: the ingest routes go to the ingestor", nginxConfPath)
	require.Equal(t, []string{"/"}, c.apiLocations, "%s: everything else goes to the api", nginxConfPath)
	return c
}

// forTest is the configuration with the listen address and the upstreams replaced, as
// pkg/testenv/nginx's Options.Server takes it; nothing else changes.
func (c nginxConf) forTest(t *testing.T, ingestor, api string) string {
	t.Helper()
	out := nginxListenRe.ReplaceAllString(c.text, "    listen {{.Listen}};")
	out = strings.Replace(out, "set $pulseboard_ingestor "+c.ingestor+";", "set $pulseboard_ingestor "+ingestor+";", 1)
	out = strings.Replace(out, "set $pulseboard_api "+c.api+";", "set $pulseboard_api "+api+";", 1)
	require.Contains(t, out, "{{.Listen}}")
	require.Contains(t, out, ingestor)
	require.Contains(t, out, api)
	return out
}

// checkComposeOneOrigin: the nginx service publishes :3000 with deploy/nginx/pulseboard.conf,
// its upstreams are the ingestor's and the api's service names and ports, both services
// trust nginx's fixed address (and nothing wider), and the api is reached only through it.
func checkComposeOneOrigin(t *testing.T, p *composetypes.Project) {
	t.Helper()
	conf := readNginxConf(t)
	ng, ok := p.Services["nginx"]
	require.True(t, ok, "docker-compose.yml has no nginx service (the one public origin)")
	require.Equal(t, "nginx", imageRepo(ng.Image))
	require.Contains(t, ng.Image, ":", "pin the nginx image")
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	mounted := false
	for _, v := range ng.Volumes {
		if v.Type == composetypes.VolumeTypeBind && v.Target == "/etc/nginx/conf.d/default.conf" {
			require.Equal(t, filepath.Join(root, nginxConfPath), v.Source)
			require.True(t, v.ReadOnly)
			mounted = true
		}
	}
	require.True(t, mounted, "nginx must mount %s as /etc/nginx/conf.d/default.conf", nginxConfPath)
	require.Len(t, ng.Ports, 1)
	require.Equal(t, "3000", ng.Ports[0].Published, "the one origin is published where the old backend was")
	require.Equal(t, conf.listen, itoa(ng.Ports[0].Target), "nginx listens where compose publishes")

	env := func(svc, name string) string {
		v := p.Services[svc].Environment[name]
		require.NotNil(t, v, "docker-compose.yml: %s sets no %s", svc, name)
		return *v
	}
	require.Equal(t, "ingestor:"+env("ingestor", "INGEST_PORT"), conf.ingestor, "%s: the ingestor's upstream", nginxConfPath)
	require.Equal(t, "api:"+env("api", "PORT"), conf.api, "%s: the api's upstream", nginxConfPath)
	for _, dep := range []string{"ingestor", "api"} {
		_, ok := ng.DependsOn[dep]
		require.True(t, ok, "nginx depends on %s", dep)
	}

	// nginx's fixed address, in the network's fixed subnet, is what both services trust.
	sn := ng.Networks["default"]
	require.NotNil(t, sn, "nginx needs a fixed address on the default network")
	addr, err := netip.ParseAddr(sn.Ipv4Address)
	require.NoError(t, err)
	nw := p.Networks["default"]
	require.NotEmpty(t, nw.Ipam.Config, "the default network needs a fixed subnet")
	subnet, err := netip.ParsePrefix(nw.Ipam.Config[0].Subnet)
	require.NoError(t, err)
	require.True(t, subnet.Contains(addr), "nginx's address %s is outside the subnet %s", addr, subnet)
	for svc, name := range map[string]string{"ingestor": "INGEST_TRUSTED_PROXIES", "api": "API_TRUSTED_PROXIES"} {
		trusted, err := clientip.ParseTrusted(env(svc, name))
		require.NoError(t, err)
		require.True(t, clientip.New(trusted, clientip.XForwardedFor).Trusted(addr), "%s: %s must trust nginx (%s)", svc, name, addr)
		for _, pr := range trusted {
			require.Equal(t, pr.Addr().BitLen(), pr.Bits(), "%s: %s trusts %s, wider than nginx's address: other containers could name their clients", svc, name, pr)
		}
	}
	require.Empty(t, p.Services["api"].Ports, "the api is published through nginx only, which it trusts")
	ing := p.Services["ingestor"]
	require.Len(t, ing.Ports, 1)
	require.Equal(t, env("ingestor", "INGEST_PORT"), ing.Ports[0].Published)
	require.Equal(t, env("ingestor", "INGEST_PORT"), itoa(ing.Ports[0].Target))
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// ingressBackend is the Service a request path reaches through an Ingress rule:
// Kubernetes' matching (Exact, or Prefix by whole path elements; the longest match wins).
func ingressBackend(rule networkingv1.IngressRule, path string) (service, port string) {
	best := -1
	for _, p := range rule.HTTP.Paths {
		match := false
		switch *p.PathType {
		case networkingv1.PathTypeExact:
			match = path == p.Path
		case networkingv1.PathTypePrefix:
			prefix := strings.TrimSuffix(p.Path, "/")
			match = prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
		}
		if match && len(p.Path) > best {
			best = len(p.Path)
			service, port = p.Backend.Service.Name, p.Backend.Service.Port.Name
		}
	}
	return service, port
}

// checkIngress: deploy/k8s/ingress.yaml serves the api's public host, sends the ingest
// and analytics routes to the ingestor's Service and everything else to the api's, on
// ports those Services have, and both services trust the controller's X-Forwarded-For.
func checkIngress(t *testing.T, o k8sObjects, envOf func(string, corev1.Container) map[string]string) {
	t.Helper()
	require.Len(t, o.ingresses, 1, "deploy/k8s has one Ingress (the one public origin)")
	ing := o.ingresses["pulseboard"]
	require.NotNil(t, ing, "no Ingress pulseboard")
	require.Equal(t, "pulseboard", ing.Namespace)
	require.NotNil(t, ing.Spec.IngressClassName)
	apiEnv := envOf("Deployment api", o.deployments["api"].Spec.Template.Spec.Containers[0])
	ingestEnv := envOf("Deployment ingestor", o.deployments["ingestor"].Spec.Template.Spec.Containers[0])
	public, err := url.Parse(apiEnv["API_PUBLIC_URL"])
	require.NoError(t, err)
	require.Len(t, ing.Spec.Rules, 1)
	rule := ing.Spec.Rules[0]
	require.Equal(t, public.Hostname(), rule.Host, "the Ingress serves the api's public address (API_PUBLIC_URL)")
	require.Len(t, ing.Spec.TLS, 1)
	require.Contains(t, ing.Spec.TLS[0].Hosts, rule.Host)
	require.NotNil(t, rule.HTTP)
	want := map[string]string{
		"/ingest": "ingestor", "/ingest/batch": "ingestor", "/analytics/crash": "ingestor", "/analytics/session": "ingestor",
		"/analytics/screen-view": "ingestor", "/analytics/api-call": "ingestor",
		"/auth/login": "api", "/projects": "api", "/events": "api", "/realtime/p/sse": "api", "/socket.io/": "api",
		"/openapi.json": "api", "/ingestx": "api", "/": "api",
	}
	paths := make([]string, 0, len(want))
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		svc, port := ingressBackend(rule, p)
		require.Equal(t, want[p], svc, "Ingress: %s", p)
		s := o.services[svc]
		require.NotNil(t, s, "Ingress: no Service %s", svc)
		require.Equal(t, s.Spec.Ports[0].Name, port, "Ingress: %s names a port Service %s does not have", p, svc)
	}
	for where, v := range map[string]string{"ingestor INGEST_TRUSTED_PROXIES": ingestEnv["INGEST_TRUSTED_PROXIES"], "api API_TRUSTED_PROXIES": apiEnv["API_TRUSTED_PROXIES"]} {
		trusted, err := clientip.ParseTrusted(v)
		require.NoError(t, err, where)
		require.NotEmpty(t, trusted, "%s: behind the Ingress the services must trust its controller", where)
	}
}

package main_test

// Checks of what operators deploy (deploy/, docker-compose.yml, .env.example, README)
// against what the services actually read and export. Docker and Kubernetes are not
// needed: the files are read with the parsers those tools use (compose-go, the parser of
// `docker compose`; k8s.io/api types, decoded strictly so a misspelt field fails), and
// Prometheus files with promtool.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"
	yaml "go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/pulseboard/pulseboard/alerter"
	"github.com/pulseboard/pulseboard/consumer"
	"github.com/pulseboard/pulseboard/ingestor"
	"github.com/pulseboard/pulseboard/pkg/config"
	"github.com/pulseboard/pulseboard/pkg/testenv/realkafka"
)

// Components that run as their own container, and the admin port each defaults to.
var adminPorts = map[string]int{"pulseboard": 9100, "ingestor": 9101, "consumer": 9102, "alerter": 9103, "api": 9104}

// goRuntimeVars are read by the Go runtime of every PulseBoard binary, not by its config.
var goRuntimeVars = []string{"GOMEMLIMIT", "GOMAXPROCS", "GOGC", "GODEBUG"}

// thirdPartyVars are the documented variables of the other images in docker-compose.yml,
// by image repository (prefixes end with "_"). Anything else given to them is a typo.
var thirdPartyVars = map[string][]string{
	"apache/kafka":     {"KAFKA_", "CLUSTER_ID"},
	"postgres":         {"POSTGRES_", "PGDATA"},
	"redis":            {},
	"axllent/mailpit":  {"MP_"},
	"prom/prometheus":  {},
	"grafana/grafana":  {"GF_"},
	"nginx":            {},
	"pulseboard/dummy": nil,
}

// readBy is, per component, every variable it reads: the env tags declared in its own
// source, plus those of the service Config structs it parses (each standalone binary
// parses its service's Config, which embeds the shared Kafka and SMTP settings; the
// all-in-one parses all three).
func readBy(t *testing.T) map[string]map[string]bool {
	t.Helper()
	cat := envCatalog(t)
	out := map[string]map[string]bool{}
	for comp := range adminPorts {
		out[comp] = map[string]bool{}
	}
	for name, v := range cat {
		for comp := range v.Defaults {
			if out[comp] != nil {
				out[comp][name] = true
			}
		}
	}
	add := func(comp string, cfgs ...any) {
		for _, c := range cfgs {
			tags := map[string]string{}
			reflectEnvTags(reflect.TypeOf(c), tags)
			for name := range tags {
				out[comp][name] = true
			}
		}
	}
	add("ingestor", ingestor.Config{})
	add("consumer", consumer.Config{})
	add("alerter", alerter.Config{})
	add("pulseboard", ingestor.Config{}, consumer.Config{}, alerter.Config{}, config.Kafka{})
	for comp, vars := range out {
		for _, v := range goRuntimeVars {
			vars[v] = true
		}
		require.Contains(t, vars, "LOG_LEVEL", comp)
	}
	require.NotContains(t, out["api"], "KAFKA_BROKERS", "the api does not read Kafka settings")
	require.NotContains(t, out["consumer"], "INGEST_PORT")
	return out
}

// imageRepo strips the registry-free tag: "apache/kafka:4.4.0" → "apache/kafka".
func imageRepo(image string) string {
	repo, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	return repo
}

func thirdPartyAllows(image, name string) (known, ok bool) {
	prefixes, known := thirdPartyVars[imageRepo(image)]
	if !known {
		return false, false
	}
	for _, p := range prefixes {
		if name == p || (strings.HasSuffix(p, "_") && strings.HasPrefix(name, p)) {
			return true, true
		}
	}
	return true, false
}

// --- Prometheus ----------------------------------------------------------------------

// promtool runs Debian's promtool (package prometheus; .ci/run installs it). A missing
// promtool fails the test: the rules would otherwise go unchecked.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	require.NoError(t, err, "promtool is required (apt-get install prometheus; .ci/run does it)")
	cmd := exec.Command(path, args...)
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
	return string(out)
}

func TestPromtoolChecksConfigRulesAndRuleTests(t *testing.T) {
	t.Parallel()
	out := promtool(t, "check", "config", "deploy/prometheus/prometheus.yml")
	require.Contains(t, out, "SUCCESS")
	out = promtool(t, "check", "rules", "deploy/prometheus/alerts.yml")
	require.Regexp(t, `SUCCESS: \d+ rules found`, out)
	// The rules' own unit tests: each alert fires on the series it is meant for.
	out = promtool(t, "test", "rules", "deploy/prometheus/alerts_test.yml")
	require.Contains(t, out, "SUCCESS")
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlertRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy/prometheus/alerts.yml"), &rf))
	require.NotEmpty(t, rf.Groups)
	return rf
}

// githubAnchor is the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func readmeAnchors(t *testing.T) map[string]bool {
	t.Helper()
	anchors := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(readRepoFile(t, "README.md")))
	inFence := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if !inFence && strings.HasPrefix(line, "#") {
			anchors[githubAnchor(strings.TrimLeft(line, "#"))] = true
		}
	}
	return anchors
}

// Every alert (the list: lag growing, DLQ, 5xx ratio, produce latency, stalled
// consumer, email failures) has a duration, a severity, a summary and a runbook entry
// that exists in the README.
func TestAlertRulesAreCompleteAndHaveRunbooks(t *testing.T) {
	t.Parallel()
	rf := loadAlertRules(t)
	anchors := readmeAnchors(t)
	const base = "https://github.com/pulseboard/pulseboard/blob/main/README.md#"
	var names []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "group %s has a recording rule; only alerts belong here", g.Name)
			names = append(names, r.Alert)
			_, err := time.ParseDuration(r.For)
			assert(t, err == nil, "%s: for %q is not a duration", r.Alert, r.For)
			assert(t, slices.Contains([]string{"warning", "critical"}, r.Labels["severity"]), "%s: severity %q", r.Alert, r.Labels["severity"])
			assert(t, r.Annotations["summary"] != "" && r.Annotations["description"] != "", "%s: summary and description", r.Alert)
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], base)
			if assert(t, ok, "%s: runbook_url %q is not a README anchor", r.Alert, r.Annotations["runbook_url"]) {
				assert(t, anchor == strings.ToLower(r.Alert), "%s: runbook anchor %q should be the alert's name", r.Alert, anchor)
				assert(t, anchors[anchor], "%s: the README has no runbook heading %q", r.Alert, r.Alert)
			}
		}
	}
	for _, want := range []string{"PulseBoardConsumerLagGrowing", "PulseBoardDLQNotEmpty", "PulseBoardIngest5xxRatioHigh",
		"PulseBoardProduceLatencyHigh", "PulseBoardConsumerStalled", "PulseBoardAlertEmailFailures"} {
		require.Contains(t, names, want)
	}
}

// --- Grafana -------------------------------------------------------------------------

type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	raw := readRepoFile(t, "deploy/grafana/dashboards/pulseboard.json")
	require.True(t, json.Valid(raw), "the dashboard is not valid JSON")
	dec := json.NewDecoder(bytes.NewReader(raw))
	var d dashboard
	require.NoError(t, dec.Decode(&d))
	require.NotEmpty(t, d.UID)
	require.NotEmpty(t, d.Panels)
	return d
}

// dashboardExprs returns every query of the dashboard, by panel title.
func dashboardExprs(d dashboard) map[string][]string {
	out := map[string][]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title] = append(out[p.Title], tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// grafanaMacros are replaced by a duration so promtool can parse the queries.
var grafanaMacros = regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)

// The dashboard is valid JSON, its panels use the provisioned datasource, cover what the
// issue lists, and every query parses as PromQL (checked by promtool as recording rules).
// That it references only exported metrics is checked after real traffic
// (TestMetricsAfterRealTraffic).
func TestDashboardIsValidAndProvisioned(t *testing.T) {
	t.Parallel()
	d := loadDashboard(t)

	var ds struct {
		Datasources []struct {
			UID, Type, URL string
		} `yaml:"datasources"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy/grafana/provisioning/datasources/prometheus.yml"), &ds))
	require.Len(t, ds.Datasources, 1)
	require.Equal(t, "prometheus", ds.Datasources[0].Type)
	require.Equal(t, "http://prometheus:9090", ds.Datasources[0].URL, "the compose service name and port")

	ids := map[int]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			assert(t, !ids[p.ID], "panel id %d is used twice", p.ID)
			ids[p.ID] = true
			assert(t, p.GridPos.X >= 0 && p.GridPos.W > 0 && p.GridPos.X+p.GridPos.W <= 24, "panel %q is outside the 24-column grid", p.Title)
			if p.Type != "row" {
				if assert(t, p.Datasource != nil, "panel %q has no datasource", p.Title) {
					assert(t, p.Datasource.UID == ds.Datasources[0].UID, "panel %q uses datasource %q, not the provisioned %q", p.Title, p.Datasource.UID, ds.Datasources[0].UID)
				}
				assert(t, len(p.Targets) > 0, "panel %q has no query", p.Title)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	exprs := dashboardExprs(d)
	all := strings.Join(slices.Concat(slices.Collect(mapValues(exprs))...), "\n")
	for _, topic := range []string{"pulseboard_ingest_requests_total", "pulseboard_ingest_events_dropped_total",
		"pulseboard_ingest_request_duration_seconds_bucket", "pulseboard_consumer_lag_messages",
		"pulseboard_consumer_receive_to_stored_seconds_bucket", "pulseboard_api_live_connections",
		"pulseboard_alerter_alerts_fired_total", "ALERTS"} {
		assert(t, strings.Contains(all, topic), "the dashboard shows nothing of %s", topic)
	}

	// promtool parses the queries: as recording rules, one per query.
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for _, title := range sortedNames(exprs) {
		for i, e := range exprs[title] {
			require.NotEmpty(t, strings.TrimSpace(e), "panel %q has an empty query", title)
			rules = append(rules, rule{Record: fmt.Sprintf("dashboard:query_%d:%d", len(rules), i), Expr: grafanaMacros.ReplaceAllString(e, "5m")})
		}
	}
	out, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	require.NoError(t, err)
	tmp := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	require.NoError(t, os.WriteFile(tmp, out, 0o600))
	abs, err := filepath.Abs(tmp)
	require.NoError(t, err)
	require.Contains(t, promtool(t, "check", "rules", abs), fmt.Sprintf("SUCCESS: %d rules found", len(rules)))
}

func mapValues[K comparable, V any](m map[K]V) func(func(V) bool) {
	return func(yield func(V) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// --- docker-compose.yml --------------------------------------------------------------

func loadCompose(t *testing.T) *composetypes.Project {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	// Hermetic: neither the caller's environment nor a developer's .env interpolates.
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithName("pulseboard"), cli.WithEnv([]string{}),
		cli.WithResolvedPaths(true))
	require.NoError(t, err)
	p, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "docker-compose.yml does not load with compose-go")
	return p
}

// composeComponent is the PulseBoard component a compose service runs ("" for others):
// the Dockerfile target it builds.
func composeComponent(s composetypes.ServiceConfig) string {
	if s.Build != nil && s.Build.Target != "" {
		return s.Build.Target
	}
	return ""
}

func TestComposeFileParsesAndIsComplete(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	read := readBy(t)
	svc := func(name string) composetypes.ServiceConfig {
		s, ok := p.Services[name]
		require.True(t, ok, "docker-compose.yml has no service %q", name)
		return s
	}

	// The dependencies the issue names.
	kafka := svc("kafka")
	require.Equal(t, "apache/kafka", imageRepo(kafka.Image))
	require.Equal(t, "apache/kafka:"+realkafka.Latest, kafka.Image, "the pinned Kafka is the one the real-broker tier tests")
	require.Equal(t, kafka.Image, svc("kafka-init").Image)
	require.Contains(t, *kafka.Environment["KAFKA_PROCESS_ROLES"], "controller", "Kafka runs in KRaft mode")
	require.Equal(t, "false", *kafka.Environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"],
		"topics come from kafka-init with 12 partitions, never auto-created with one")
	require.True(t, strings.HasPrefix(svc("postgres").Image, "postgres:16"))
	require.True(t, strings.HasPrefix(svc("redis").Image, "redis:7"))
	require.Equal(t, "axllent/mailpit", imageRepo(svc("mailpit").Image))
	require.Equal(t, "prom/prometheus", imageRepo(svc("prometheus").Image))
	require.Equal(t, "grafana/grafana", imageRepo(svc("grafana").Image))
	for _, dep := range []string{"kafka", "postgres", "redis", "mailpit"} {
		require.NotNil(t, svc(dep).HealthCheck, "%s needs a healthcheck: services wait for it to be healthy", dep)
	}

	// The one-shot migration.
	migrate := svc("migrate")
	require.Equal(t, "pulseboard", composeComponent(migrate))
	require.Equal(t, composetypes.ShellCommand{"migrate"}, migrate.Command)
	require.Equal(t, "no", migrate.Restart)
	require.Equal(t, composetypes.ServiceConditionHealthy, migrate.DependsOn["postgres"].Condition)

	// Every PulseBoard service builds from deploy/Dockerfile, waits for the migration, the
	// topics and healthy dependencies, gets only variables it reads, and has a stop grace
	// period longer than its shutdown bounds.
	stages := dockerfileStages(t)
	for _, name := range []string{"ingestor", "consumer", "alerter", "api"} {
		s := svc(name)
		comp := composeComponent(s)
		require.Equal(t, name, comp)
		require.Equal(t, "deploy/Dockerfile", s.Build.Dockerfile)
		require.Contains(t, stages, s.Build.Target)
		require.Equal(t, composetypes.ServiceConditionCompletedSuccessfully, s.DependsOn["migrate"].Condition, name)
		require.Equal(t, composetypes.ServiceConditionCompletedSuccessfully, s.DependsOn["kafka-init"].Condition, name)
		require.Equal(t, composetypes.ServiceConditionHealthy, s.DependsOn["redis"].Condition, name)
		require.NotNil(t, s.StopGracePeriod, name)
		env := map[string]string{}
		for k, v := range s.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		require.Equal(t, "0.0.0.0", env["ADMIN_HOST"], "%s: Prometheus scrapes the admin port from another container", name)
		validateEnv(t, "docker-compose.yml "+name, comp, env)
		require.Greater(t, time.Duration(*s.StopGracePeriod), shutdownBound(t, comp, env), "%s: stop_grace_period", name)
	}
	// Exposure: the binaries keep their admin port on 127.0.0.1 unless told otherwise, so
	// every long-running PulseBoard container says ADMIN_HOST explicitly (the one-shot
	// migrate has no admin port), and none turns pprof on.
	for _, name := range sortedNames(p.Services) {
		s := p.Services[name]
		if composeComponent(s) == "" {
			continue
		}
		if !slices.Equal(s.Command, composetypes.ShellCommand{"migrate"}) {
			host := s.Environment["ADMIN_HOST"]
			assert(t, host != nil && *host != "", "docker-compose.yml: %s must set ADMIN_HOST explicitly (the binaries default to 127.0.0.1)", name)
		}
		pprof := s.Environment["ADMIN_PPROF"]
		assert(t, pprof == nil || *pprof != "true", "docker-compose.yml: %s turns pprof on (ADMIN_PPROF)", name)
	}
	checkComposeOneOrigin(t, p)
	consumerSvc := svc("consumer")
	require.Empty(t, consumerSvc.ContainerName, "--scale consumer=N needs no fixed container name")
	require.Empty(t, consumerSvc.Ports, "--scale consumer=N needs no published port")

	// Variables: PulseBoard containers get only what their component reads; the others
	// only their images' documented variables.
	for _, name := range sortedNames(p.Services) {
		s := p.Services[name]
		comp := composeComponent(s)
		for v := range s.Environment {
			if comp != "" {
				assert(t, read[comp][v], "docker-compose.yml: %s sets %s, which %s does not read", name, v, comp)
				continue
			}
			known, ok := thirdPartyAllows(s.Image, v)
			assert(t, known, "docker-compose.yml: %s uses image %s; add its variables to thirdPartyVars", name, s.Image)
			assert(t, !known || ok, "docker-compose.yml: %s sets %s, not a variable of %s", name, v, s.Image)
		}
	}

	// Prometheus and Grafana get the files of deploy/ at the paths their configs expect.
	mounts := func(s composetypes.ServiceConfig) map[string]string {
		m := map[string]string{}
		for _, v := range s.Volumes {
			if v.Type == composetypes.VolumeTypeBind {
				_, err := os.Stat(v.Source)
				assert(t, err == nil, "%s mounts %s, which does not exist", s.Name, v.Source)
				m[v.Target] = v.Source
			}
		}
		return m
	}
	root, _ := filepath.Abs(repoRoot)
	require.Equal(t, filepath.Join(root, "deploy/prometheus"), mounts(svc("prometheus"))["/etc/prometheus"])
	require.Contains(t, strings.Join(svc("prometheus").Command, " "), "--config.file=/etc/prometheus/prometheus.yml")
	gm := mounts(svc("grafana"))
	require.Equal(t, filepath.Join(root, "deploy/grafana/provisioning"), gm["/etc/grafana/provisioning"])
	var prov struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy/grafana/provisioning/dashboards/pulseboard.yml"), &prov))
	require.Len(t, prov.Providers, 1)
	require.Equal(t, filepath.Join(root, "deploy/grafana/dashboards"), gm[prov.Providers[0].Options.Path],
		"Grafana's dashboard provider reads a directory that compose does not mount")

	// Prometheus scrapes each PulseBoard service on its admin port, by compose service name.
	var pc struct {
		ScrapeConfigs []struct {
			JobName      string `yaml:"job_name"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy/prometheus/prometheus.yml"), &pc))
	scraped := map[string]int{}
	for _, sc := range pc.ScrapeConfigs {
		for _, d := range sc.DNSSDConfigs {
			for _, n := range d.Names {
				scraped[n] = d.Port
			}
		}
	}
	for _, name := range []string{"ingestor", "consumer", "alerter", "api"} {
		require.Equal(t, adminPorts[name], scraped[name], "prometheus.yml scrapes %s on its admin port", name)
	}
}

// shutdownBound is how long a component may take to stop after SIGTERM with env (the
// component's defaults where env is silent), from its Config.
func shutdownBound(t *testing.T, comp string, env map[string]string) time.Duration {
	t.Helper()
	e := config.Env(env)
	switch comp {
	case "ingestor":
		c, err := config.Parse[ingestor.Config](e)
		require.NoError(t, err)
		return c.DrainDelay + c.ShutdownTimeout
	case "consumer":
		c, err := config.Parse[consumer.Config](e)
		require.NoError(t, err)
		return c.ShutdownTimeout
	case "alerter":
		c, err := config.Parse[alerter.Config](e)
		require.NoError(t, err)
		return c.ShutdownTimeout
	case "api":
		// api.Config is not a dependency of this module; API_SHUTDOWN_TIMEOUT [15s].
		d, err := time.ParseDuration(cmpOr(env["API_SHUTDOWN_TIMEOUT"], "15s"))
		require.NoError(t, err)
		return d
	}
	t.Fatalf("no shutdown bound for %s", comp)
	return 0
}

// validateEnv parses env as the component does and runs its Validate: the values given
// in docker-compose.yml and deploy/k8s must start the service, not just name variables
// it reads. (The api's Config is not a dependency of this module; its names are checked.)
func validateEnv(t *testing.T, where, comp string, env map[string]string) {
	t.Helper()
	e := config.Env(env)
	var err error
	switch comp {
	case "ingestor":
		var c ingestor.Config
		if c, err = config.Parse[ingestor.Config](e); err == nil {
			err = c.Validate()
		}
	case "consumer":
		var c consumer.Config
		if c, err = config.Parse[consumer.Config](e); err == nil {
			err = c.Validate()
		}
	case "alerter":
		var c alerter.Config
		if c, err = config.Parse[alerter.Config](e); err == nil {
			err = c.Validate()
		}
	}
	require.NoError(t, err, "%s: the %s configuration is invalid", where, comp)
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// --- deploy/Dockerfile ---------------------------------------------------------------

// dockerfileStages returns the stage names of deploy/Dockerfile.
func dockerfileStages(t *testing.T) []string {
	t.Helper()
	var stages []string
	re := regexp.MustCompile(`(?im)^FROM\s+\S+\s+AS\s+(\S+)\s*$`)
	for _, m := range re.FindAllStringSubmatch(string(readRepoFile(t, "deploy/Dockerfile")), -1) {
		stages = append(stages, m[1])
	}
	return stages
}

// The Dockerfile builds every service's main package statically and runs each as the
// non-root user of a distroless image.
func TestDockerfileBuildsEveryServiceStatically(t *testing.T) {
	t.Parallel()
	df := string(readRepoFile(t, "deploy/Dockerfile"))
	require.Regexp(t, `(?m)^ENV .*CGO_ENABLED=0`, df)
	build := regexp.MustCompile(`(?s)go build .*?-o /out/((?:\s*\\?\s*\./\S+)+)`).FindStringSubmatch(df)
	require.NotNil(t, build, "no go build -o /out/ <packages> in deploy/Dockerfile")
	pkgs := strings.Fields(strings.ReplaceAll(build[1], `\`, " "))
	for _, pkg := range []string{"./cmd/pulseboard", "./ingestor/cmd/ingestor", "./consumer/cmd/consumer", "./alerter/cmd/alerter", "./api/cmd/api"} {
		require.Contains(t, pkgs, pkg)
		require.FileExists(t, filepath.Join(repoRoot, pkg, "main.go"), "%s is not a main package", pkg)
		require.Contains(t, string(readRepoFile(t, filepath.Join(pkg, "main.go"))), "package main")
	}
	stages := dockerfileStages(t)
	for comp := range adminPorts {
		require.Contains(t, stages, comp)
		stage := regexp.MustCompile(`(?s)FROM base AS ` + comp + `\n(.*?)(?:\nFROM |\z)`).FindStringSubmatch(df)
		require.NotNil(t, stage, comp)
		require.Contains(t, stage[1], `ENTRYPOINT ["/usr/local/bin/`+comp+`"]`)
	}
	require.Regexp(t, `(?m)^FROM gcr\.io/distroless/static-debian12:nonroot AS base$`, df)
	require.Regexp(t, `(?m)^USER 65532:65532$`, df)
	// The builder's Go is the workspace's.
	goWork := string(readRepoFile(t, "go.work"))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(goWork)
	require.NotNil(t, goVersion)
	require.Contains(t, df, "ARG GO_VERSION="+goVersion[1])
}

// --- deploy/k8s ----------------------------------------------------------------------

type k8sObjects struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler
	jobs        map[string]*batchv1.Job
	pdbs        map[string]*policyv1.PodDisruptionBudget
	namespaces  map[string]*corev1.Namespace
	ingresses   map[string]*networkingv1.Ingress
	files       []string
}

// loadK8s decodes every manifest strictly into the Kubernetes API types: an unknown or
// misspelt field (readinesProbe, containerport) is an error, as it is for kubectl's
// server-side field validation.
func loadK8s(t *testing.T) k8sObjects {
	t.Helper()
	o := k8sObjects{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{}, hpas: map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		jobs: map[string]*batchv1.Job{}, pdbs: map[string]*policyv1.PodDisruptionBudget{}, namespaces: map[string]*corev1.Namespace{},
		ingresses: map[string]*networkingv1.Ingress{},
	}
	files, err := filepath.Glob(filepath.Join(repoRoot, "deploy/k8s/*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		base := filepath.Base(f)
		if base == "kustomization.yaml" {
			continue
		}
		o.files = append(o.files, base)
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, base)
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var tm metav1.TypeMeta
			require.NoError(t, sigsyaml.Unmarshal(doc, &tm), base)
			strict := func(into any) {
				require.NoError(t, sigsyaml.UnmarshalStrict(doc, into), "%s: %s", base, tm.Kind)
			}
			switch gvk := tm.APIVersion + "/" + tm.Kind; gvk {
			case "apps/v1/Deployment":
				var d appsv1.Deployment
				strict(&d)
				o.deployments[d.Name] = &d
			case "v1/Service":
				var s corev1.Service
				strict(&s)
				o.services[s.Name] = &s
			case "v1/ConfigMap":
				var c corev1.ConfigMap
				strict(&c)
				o.configMaps[c.Name] = &c
			case "autoscaling/v2/HorizontalPodAutoscaler":
				var h autoscalingv2.HorizontalPodAutoscaler
				strict(&h)
				o.hpas[h.Name] = &h
			case "batch/v1/Job":
				var j batchv1.Job
				strict(&j)
				o.jobs[j.Name] = &j
			case "policy/v1/PodDisruptionBudget":
				var p policyv1.PodDisruptionBudget
				strict(&p)
				o.pdbs[p.Name] = &p
			case "v1/Namespace":
				var n corev1.Namespace
				strict(&n)
				o.namespaces[n.Name] = &n
			case "networking.k8s.io/v1/Ingress":
				var i networkingv1.Ingress
				strict(&i)
				o.ingresses[i.Name] = &i
			default:
				t.Fatalf("%s: unexpected kind %s; teach loadK8s its type", base, gvk)
			}
		}
	}
	return o
}

// k8sComponent is the PulseBoard component of a container image ("pulseboard/api:dev").
func k8sComponent(t *testing.T, image string) string {
	t.Helper()
	repo := imageRepo(image)
	comp, ok := strings.CutPrefix(repo, "pulseboard/")
	require.True(t, ok, "image %s is not a PulseBoard image", image)
	require.Contains(t, adminPorts, comp)
	return comp
}

func TestKubernetesManifestsParseAndAreComplete(t *testing.T) {
	t.Parallel()
	o := loadK8s(t)
	read := readBy(t)
	require.Contains(t, o.namespaces, "pulseboard")

	// kustomization.yaml lists every manifest.
	var kust struct {
		Namespace string   `yaml:"namespace"`
		Resources []string `yaml:"resources"`
		Images    []struct {
			Name string `yaml:"name"`
		} `yaml:"images"`
	}
	require.NoError(t, yaml.Unmarshal(readRepoFile(t, "deploy/k8s/kustomization.yaml"), &kust))
	require.ElementsMatch(t, o.files, kust.Resources)
	require.Equal(t, "pulseboard", kust.Namespace)

	envOf := func(where string, c corev1.Container) map[string]string {
		env := map[string]string{}
		for _, ef := range c.EnvFrom {
			require.Nil(t, ef.SecretRef, "%s: envFrom a Secret hides which variables are set; use secretKeyRef", where)
			require.NotNil(t, ef.ConfigMapRef, where)
			cm, ok := o.configMaps[ef.ConfigMapRef.Name]
			require.True(t, ok, "%s: no ConfigMap %s", where, ef.ConfigMapRef.Name)
			for k, v := range cm.Data {
				env[ef.Prefix+k] = v
			}
		}
		for _, e := range c.Env {
			v := e.Value
			if e.ValueFrom != nil {
				switch {
				case e.ValueFrom.SecretKeyRef != nil:
					require.Equal(t, "pulseboard", e.ValueFrom.SecretKeyRef.Name, where)
					v = "secret-" + e.ValueFrom.SecretKeyRef.Key // a stand-in, for validation
				case e.ValueFrom.ResourceFieldRef != nil:
					v = c.Resources.Limits.Memory().String()
				}
			}
			env[e.Name] = v
		}
		return env
	}

	for _, name := range []string{"ingestor", "consumer", "alerter", "api"} {
		d, ok := o.deployments[name]
		require.True(t, ok, "no Deployment %s", name)
		where := "Deployment " + name
		require.Equal(t, d.Spec.Selector.MatchLabels, filterLabels(d.Spec.Template.Labels, d.Spec.Selector.MatchLabels), where)
		spec := d.Spec.Template.Spec
		require.Len(t, spec.Containers, 1, where)
		c := spec.Containers[0]
		comp := k8sComponent(t, c.Image)
		require.Equal(t, name, comp, where)
		env := envOf(where, c)
		for v := range env {
			assert(t, read[comp][v], "%s sets %s, which %s does not read", where, v, comp)
		}
		require.Equal(t, "0.0.0.0", env["ADMIN_HOST"], "%s: probes and Prometheus reach the admin port from outside the pod", where)
		validateEnv(t, where, comp, env)
		require.Equal(t, fmt.Sprint(adminPorts[comp]), cmpOr(env["ADMIN_PORT"], fmt.Sprint(adminPorts[comp])), where)

		// Probes: alive on /healthz, ready on /readyz, both on the admin port.
		admin := containerPort(c, "admin")
		require.Equal(t, int32(adminPorts[comp]), admin, "%s: the admin port", where)
		for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
			require.NotNil(t, probe, "%s: %s probe", where, path)
			require.NotNil(t, probe.HTTPGet, where)
			require.Equal(t, path, probe.HTTPGet.Path, where)
			require.Equal(t, "admin", probe.HTTPGet.Port.String(), where)
		}
		// Resources: requests and limits for CPU and memory.
		for _, rl := range []corev1.ResourceList{c.Resources.Requests, c.Resources.Limits} {
			require.False(t, rl.Cpu().IsZero(), "%s: cpu", where)
			require.False(t, rl.Memory().IsZero(), "%s: memory", where)
		}
		require.NotNil(t, spec.SecurityContext, where)
		require.True(t, *spec.SecurityContext.RunAsNonRoot, where)
		require.NotNil(t, c.SecurityContext, where)
		require.True(t, *c.SecurityContext.ReadOnlyRootFilesystem, where)
		// SIGTERM ends gracefully, not in a SIGKILL.
		require.NotNil(t, spec.TerminationGracePeriodSeconds, where)
		grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
		require.Greater(t, grace, shutdownBound(t, comp, env), "%s: terminationGracePeriodSeconds", where)
		require.Equal(t, fmt.Sprint(adminPorts[comp]), d.Spec.Template.Annotations["prometheus.io/port"], where)
	}

	// Exposure: every container of every Deployment says ADMIN_HOST explicitly (the
	// binaries default to 127.0.0.1, which the kubelet's probes and Prometheus cannot
	// reach), and none turns pprof on.
	for _, name := range sortedNames(o.deployments) {
		for _, c := range o.deployments[name].Spec.Template.Spec.Containers {
			where := "Deployment " + name + " container " + c.Name
			env := envOf(where, c)
			host, ok := env["ADMIN_HOST"]
			assert(t, ok && host != "", "%s must set ADMIN_HOST explicitly (the binaries default to 127.0.0.1)", where)
			assert(t, env["ADMIN_PPROF"] != "true", "%s turns pprof on (ADMIN_PPROF)", where)
		}
	}

	// A Service per public port, selecting the Deployment's pods and a named port.
	for name, port := range map[string]int32{"ingestor": 3002, "api": 3000} {
		s, ok := o.services[name]
		require.True(t, ok, "no Service %s", name)
		d := o.deployments[name]
		require.Equal(t, s.Spec.Selector, filterLabels(d.Spec.Template.Labels, s.Spec.Selector), "Service %s selects no pod", name)
		require.Len(t, s.Spec.Ports, 1)
		require.Equal(t, port, s.Spec.Ports[0].Port)
		require.Equal(t, port, containerPort(d.Spec.Template.Spec.Containers[0], s.Spec.Ports[0].TargetPort.String()))
	}
	for name := range o.services {
		require.Contains(t, []string{"ingestor", "api"}, name, "only public ports get a Service; the admin port is scraped per pod")
	}
	checkIngress(t, o, envOf)
	// HPAs for the stateless front ends.
	for _, name := range []string{"ingestor", "api"} {
		h, ok := o.hpas[name]
		require.True(t, ok, "no HorizontalPodAutoscaler %s", name)
		require.Equal(t, "Deployment", h.Spec.ScaleTargetRef.Kind)
		require.Contains(t, o.deployments, h.Spec.ScaleTargetRef.Name)
		require.GreaterOrEqual(t, *h.Spec.MinReplicas, int32(2))
		require.NotEmpty(t, h.Spec.Metrics)
		require.Nil(t, o.deployments[h.Spec.ScaleTargetRef.Name].Spec.Replicas,
			"Deployment %s: the HPA owns the replica count; a fixed one is reset on every apply", name)
	}
	// The migration Job runs `pulseboard migrate` with only the variables migrate reads.
	j, ok := o.jobs["pulseboard-migrate"]
	require.True(t, ok, "no migrate Job")
	c := j.Spec.Template.Spec.Containers[0]
	require.Equal(t, "pulseboard", k8sComponent(t, c.Image))
	require.Equal(t, []string{"migrate"}, c.Args)
	for v := range envOf("Job pulseboard-migrate", c) {
		require.Contains(t, read["pulseboard"], v)
	}
	// Every image is one the Dockerfile builds, and kustomize can retag it.
	var images []string
	for _, im := range kust.Images {
		images = append(images, im.Name)
	}
	stages := dockerfileStages(t)
	for _, d := range o.deployments {
		repo := imageRepo(d.Spec.Template.Spec.Containers[0].Image)
		require.Contains(t, images, repo)
		require.Contains(t, stages, strings.TrimPrefix(repo, "pulseboard/"))
	}
}

func filterLabels(labels, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

func containerPort(c corev1.Container, name string) int32 {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

// --- .env.example and the README -----------------------------------------------------

// .env.example lists every variable the services read, and nothing else.
func TestEnvExampleListsEveryVariable(t *testing.T) {
	t.Parallel()
	cat := envCatalog(t)
	listed := map[string]bool{}
	re := regexp.MustCompile(`^([A-Z][A-Z0-9_]*)=`)
	for _, line := range strings.Split(string(readRepoFile(t, ".env.example")), "\n") {
		if m := re.FindStringSubmatch(line); m != nil {
			assert(t, !listed[m[1]], ".env.example lists %s twice", m[1])
			listed[m[1]] = true
		}
	}
	for _, name := range sortedNames(cat) {
		assert(t, listed[name], ".env.example does not list %s (read by %v)", name, sortedNames(cat[name].Defaults))
	}
	for _, name := range sortedNames(listed) {
		assert(t, cat[name] != nil, ".env.example lists %s, which no service reads", name)
	}
}

// configTable returns the rows of the README's configuration reference: variable → the
// default cell.
func configTable(t *testing.T) map[string]string {
	t.Helper()
	readme := string(readRepoFile(t, "README.md"))
	const begin, end = "<!-- config-table:begin -->", "<!-- config-table:end -->"
	i, j := strings.Index(readme, begin), strings.Index(readme, end)
	require.True(t, i >= 0 && j > i, "the README has no %s … %s section", begin, end)
	rows := map[string]string{}
	row := regexp.MustCompile("^\\| `([A-Z][A-Z0-9_]*)` \\| ([^|]*) \\|")
	for _, line := range strings.Split(readme[i:j], "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			assert(t, rows[m[1]] == "", "the configuration table lists %s twice", m[1])
			rows[m[1]] = strings.TrimSpace(m[2])
		}
	}
	require.NotEmpty(t, rows)
	return rows
}

// The README's configuration table has a row for every variable (and no other), and each
// row shows every default the variable has in the source.
func TestREADMEConfigurationTableListsEveryVariable(t *testing.T) {
	t.Parallel()
	cat := envCatalog(t)
	rows := configTable(t)
	for _, name := range sortedNames(cat) {
		cell, ok := rows[name]
		if !assert(t, ok, "the README's configuration table has no row for %s", name) {
			continue
		}
		for comp, def := range cat[name].Defaults {
			if def != "" {
				assert(t, strings.Contains(cell, "`"+def+"`"), "README: %s defaults to `%s` in %s; the table says %q", name, def, comp, cell)
			}
		}
	}
	for _, name := range sortedNames(rows) {
		assert(t, cat[name] != nil, "the README's configuration table lists %s, which no service reads", name)
	}
}

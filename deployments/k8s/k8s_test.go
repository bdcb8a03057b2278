package k8s

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"notify/pkg/rabbit"
)

// The custom resources are mirrored by the few fields these manifests use instead of being
// imported: KEDA's Go types live in its operator module (client-go, controller-runtime and the
// SDKs of every scaler), and prometheus-operator's monitoring types module brings
// controller-runtime and newer golang.org/x modules into the whole workspace. They are decoded
// as strictly as the built-in kinds, so a field the mirror does not know (a typo, or a new
// field) fails the test; adding a field means adding it here, checked against the CRD's
// reference (keda.sh/docs/latest/reference/scaledobject-spec, prometheus-operator's API docs).

type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion,omitempty"`
			Kind       string `json:"kind,omitempty"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		PollingInterval *int32 `json:"pollingInterval,omitempty"`
		CooldownPeriod  *int32 `json:"cooldownPeriod,omitempty"`
		MinReplicaCount *int32 `json:"minReplicaCount,omitempty"`
		MaxReplicaCount *int32 `json:"maxReplicaCount,omitempty"`
		Triggers        []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name,omitempty"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
				Kind string `json:"kind,omitempty"`
			} `json:"authenticationRef,omitempty"`
		} `json:"triggers"`
	} `json:"spec"`
}

type triggerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretTargetRef []struct {
			Parameter string `json:"parameter"`
			Name      string `json:"name"`
			Key       string `json:"key"`
		} `json:"secretTargetRef"`
	} `json:"spec"`
}

type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// render is one kustomization's output, every object decoded into its type.
type render struct {
	deployments     []*appsv1.Deployment
	jobs            []*batchv1.Job
	services        []*corev1.Service
	pdbs            []*policyv1.PodDisruptionBudget
	secrets         map[string]*corev1.Secret
	configMaps      map[string]*corev1.ConfigMap
	scaledObjects   []*scaledObject
	triggerAuths    map[string]*triggerAuthentication
	serviceMonitors []*serviceMonitor
}

// kustomize renders dir as `kustomize build dir` does and decodes every object strictly.
func kustomize(t *testing.T, dir string) render {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	r := render{
		secrets:      map[string]*corev1.Secret{},
		configMaps:   map[string]*corev1.ConfigMap{},
		triggerAuths: map[string]*triggerAuthentication{},
	}
	for _, res := range m.Resources() {
		y, err := res.AsYAML()
		if err != nil {
			t.Fatalf("%s: %v", res.CurId(), err)
		}
		gvk := res.GetGvk()
		kind := gvk.ApiVersion() + " " + gvk.Kind
		var obj any
		switch kind {
		case "apps/v1 Deployment":
			d := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, d), d
		case "batch/v1 Job":
			j := &batchv1.Job{}
			r.jobs, obj = append(r.jobs, j), j
		case "v1 Service":
			s := &corev1.Service{}
			r.services, obj = append(r.services, s), s
		case "policy/v1 PodDisruptionBudget":
			p := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, p), p
		case "v1 Secret":
			s := &corev1.Secret{}
			r.secrets[res.GetName()], obj = s, s
		case "v1 ConfigMap":
			c := &corev1.ConfigMap{}
			r.configMaps[res.GetName()], obj = c, c
		case "keda.sh/v1alpha1 ScaledObject":
			s := &scaledObject{}
			r.scaledObjects, obj = append(r.scaledObjects, s), s
		case "keda.sh/v1alpha1 TriggerAuthentication":
			a := &triggerAuthentication{}
			r.triggerAuths[res.GetName()], obj = a, a
		case "monitoring.coreos.com/v1 ServiceMonitor":
			s := &serviceMonitor{}
			r.serviceMonitors, obj = append(r.serviceMonitors, s), s
		default:
			t.Errorf("%s renders a %s, which this test has no type for: add one", dir, kind)
			continue
		}
		if err := yaml.UnmarshalStrict(y, obj); err != nil {
			t.Errorf("%s %s: %v", kind, res.GetName(), err)
		}
	}
	return r
}

// migrateSelector is what README's first apply selects: the migration Job and its Secrets and ConfigMap.
const migrateSelector = "app.kubernetes.io/component in (config,migrate)"

// services names the notify services that run on Kubernetes, each as a Deployment, container
// and image of that name (the FCM emulator and notifyctl do not).
var services = []string{"producer", "sender", "retrier", "deadletter"}

func TestKustomizations(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"base", "overlays/example"} {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			r := kustomize(t, dir)
			checkWorkloads(t, r)
			checkReferences(t, r)
			checkScaling(t, r)
			checkMonitoring(t, r)
		})
	}
}

// TestExampleOverlay checks what an overlay is for: its own namespace, image tags and Secrets.
func TestExampleOverlay(t *testing.T) {
	t.Parallel()
	overlay := kustomize(t, "overlays/example")
	for _, d := range overlay.deployments {
		if d.Namespace == "" {
			t.Errorf("Deployment %s: no namespace in the overlay", d.Name)
		}
		for _, c := range d.Spec.Template.Spec.Containers {
			if _, tag, ok := strings.Cut(path.Base(c.Image), ":"); !ok || tag == "latest" {
				t.Errorf("Deployment %s: image %q has no version tag", d.Name, c.Image)
			}
		}
	}
	for name, s := range overlay.secrets {
		for key, v := range s.Data {
			if strings.Contains(string(v), "CHANGE-ME") {
				t.Errorf("Secret %s: key %s still holds the base's placeholder", name, key)
			}
		}
	}
}

// checkWorkloads holds every pod template to what running notify safely needs.
func checkWorkloads(t *testing.T, r render) {
	t.Helper()
	images := madeImages(t)
	seen := map[string]bool{}
	for _, d := range r.deployments {
		seen[d.Name] = true
		if !slices.Contains(services, d.Name) {
			t.Errorf("Deployment %s: not a notify service (%v)", d.Name, services)
		}
		checkPod(t, "Deployment "+d.Name, &d.Spec.Template, images, true)
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector %v does not match its pods (%v)", d.Name, d.Spec.Selector, err)
		}
		covered := false
		for _, p := range r.pdbs {
			s, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			covered = covered || err == nil && s.Matches(labels.Set(d.Spec.Template.Labels))
		}
		if !covered {
			t.Errorf("Deployment %s: no PodDisruptionBudget selects its pods", d.Name)
		}
	}
	for _, s := range services {
		if !seen[s] {
			t.Errorf("no Deployment for %s", s)
		}
	}
	for _, p := range r.pdbs {
		// minAvailable on a one-replica Deployment would block every node drain.
		if p.Spec.MaxUnavailable == nil || p.Spec.MinAvailable != nil {
			t.Errorf("PodDisruptionBudget %s: want maxUnavailable (safe at any replica count), not minAvailable", p.Name)
		}
	}
	switch len(r.jobs) {
	case 0:
		return
	case 1:
	default:
		t.Fatalf("want at most one Job (the migration), have %d", len(r.jobs))
	}
	job := r.jobs[0]
	checkPod(t, "Job "+job.Name, &job.Spec.Template, images, false)
	if c := job.Spec.Template.Spec.Containers[0]; c.Image != r.imageOf("producer") || !slices.Equal(c.Args, []string{"migrate", "up"}) {
		t.Errorf("Job %s: runs %s %v, want the producer's image with args [migrate up]", job.Name, c.Image, c.Args)
	}
	// README applies the Job first with this selector: it must take the Job and what it reads.
	first, err := labels.Parse(migrateSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Matches(labels.Set(job.Labels)) {
		t.Errorf("Job %s: not selected by %s", job.Name, migrateSelector)
	}
	for _, c := range job.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil {
				if s := r.secrets[ref.SecretKeyRef.Name]; s != nil && !first.Matches(labels.Set(s.Labels)) {
					t.Errorf("Secret %s: the Job reads it but %s does not select it", s.Name, migrateSelector)
				}
			}
		}
		for _, from := range c.EnvFrom {
			if ref := from.ConfigMapRef; ref != nil {
				if cm := r.configMaps[ref.Name]; cm != nil && !first.Matches(labels.Set(cm.Labels)) {
					t.Errorf("ConfigMap %s: the Job reads it but %s does not select it", cm.Name, migrateSelector)
				}
			}
		}
	}
	for _, d := range r.deployments {
		if d.Name == "producer" && envValue(d.Spec.Template.Spec.Containers[0], "MIGRATE_ON_START") != "false" {
			t.Errorf("Deployment producer: MIGRATE_ON_START must be false (the Job migrates)")
		}
	}
}

func (r render) imageOf(deployment string) string {
	for _, d := range r.deployments {
		if d.Name == deployment {
			return d.Spec.Template.Spec.Containers[0].Image
		}
	}
	return ""
}

// checkPod checks one pod template: security context, resources, image, probes and env.
func checkPod(t *testing.T, what string, tmpl *corev1.PodTemplateSpec, images []string, probes bool) {
	t.Helper()
	spec := tmpl.Spec
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 {
		t.Errorf("%s: pod must run as non-root user 65532 (runAsNonRoot, runAsUser)", what)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: want seccompProfile RuntimeDefault", what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: notify never calls the Kubernetes API; set automountServiceAccountToken: false", what)
	}
	if len(spec.Containers) != 1 {
		t.Errorf("%s: want one container, have %d", what, len(spec.Containers))
	}
	for _, c := range spec.Containers {
		what := what + " container " + c.Name
		if sc := c.SecurityContext; sc == nil {
			t.Errorf("%s: no securityContext", what)
		} else {
			if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				t.Errorf("%s: root filesystem must be read-only", what)
			}
			if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("%s: allowPrivilegeEscalation must be false", what)
			}
			if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s: must drop ALL capabilities and add none", what)
			}
			if sc.RunAsUser != nil && *sc.RunAsUser == 0 || sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
				t.Errorf("%s: overrides the pod's non-root user", what)
			}
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := c.Resources.Requests[res]
			lim, okLim := c.Resources.Limits[res]
			if !okReq || !okLim {
				t.Errorf("%s: needs both a %s request and limit", what, res)
			} else if req.Cmp(lim) > 0 {
				t.Errorf("%s: %s request %s above its limit %s", what, res, req.String(), lim.String())
			}
		}
		if v := envValue(c, "GOMEMLIMIT"); v != "" {
			limit := c.Resources.Limits[corev1.ResourceMemory]
			soft, err := resource.ParseQuantity(strings.TrimSuffix(v, "B"))
			if err != nil || soft.Cmp(limit) >= 0 {
				t.Errorf("%s: GOMEMLIMIT %s must be below the memory limit %s (%v)", what, v, limit.String(), err)
			}
		}
		svc := imageService(c.Image)
		if !slices.Contains(images, svc) || svc != c.Name && c.Name != "migrate" {
			t.Errorf("%s: image %q is not notify/<service> for a service `make images` builds (%v)", what, c.Image, images)
		}
		checkEnv(t, what, svc, c)
		if probes {
			checkProbes(t, what, c)
		}
	}
}

// imageService returns the service an image reference names: "registry/notify/sender:1.2" → "sender".
func imageService(image string) string {
	ref, _, _ := strings.Cut(image, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	parts := strings.Split(ref, "/")
	if len(parts) < 2 || parts[len(parts)-2] != "notify" {
		return ""
	}
	return parts[len(parts)-1]
}

// checkProbes checks that readiness asks /readyz and liveness /livez on a declared port.
func checkProbes(t *testing.T, what string, c corev1.Container) {
	t.Helper()
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/livez"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", what, p.kind)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s: %s probe asks %s, want %s", what, p.kind, p.probe.HTTPGet.Path, p.path)
		}
		if port, ok := containerPort(c, p.probe.HTTPGet.Port); !ok || port.Name != "metrics" {
			t.Errorf("%s: %s probe port %s is not the container's metrics port", what, p.kind, p.probe.HTTPGet.Port.String())
		}
		if !servesPath(t, p.path) {
			t.Errorf("%s: no service code serves %s", what, p.path)
		}
	}
}

func containerPort(c corev1.Container, port intstr.IntOrString) (corev1.ContainerPort, bool) {
	for _, p := range c.Ports {
		if port.Type == intstr.String && p.Name == port.StrVal || port.Type == intstr.Int && p.ContainerPort == port.IntVal {
			return p, true
		}
	}
	return corev1.ContainerPort{}, false
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// checkEnv checks that every variable set on a container is one its service reads, and that
// the listen addresses accept connections from outside the pod on the declared ports.
func checkEnv(t *testing.T, what, service string, c corev1.Container) {
	t.Helper()
	known := envNames(t, service)
	for _, e := range c.Env {
		if !known[e.Name] {
			t.Errorf("%s: sets %s, which no code of %s or pkg/ names", what, e.Name, service)
		}
	}
	for env, portName := range map[string]string{"METRICS_ADDR": "metrics", "GRPC_ADDR": "grpc"} {
		addr := envValue(c, env)
		port, declared := containerPort(c, intstr.FromString(portName))
		switch {
		case addr == "" && !declared:
		case addr == "" || !declared:
			t.Errorf("%s: %s=%q but port %q declared: %v", what, env, addr, portName, declared)
		default:
			host, p, err := net.SplitHostPort(addr)
			if err != nil || host != "0.0.0.0" || p != fmt.Sprint(port.ContainerPort) {
				t.Errorf("%s: %s=%s, want 0.0.0.0:%d (the %s port)", what, env, addr, port.ContainerPort, portName)
			}
		}
	}
}

// checkReferences checks that every Secret and ConfigMap a pod or KEDA names is in the render,
// with the keys asked for, and that each *_FILE variable names a file a Secret volume provides.
func checkReferences(t *testing.T, r render) {
	t.Helper()
	secretHas := func(what, name, key string) {
		s, ok := r.secrets[name]
		switch {
		case !ok:
			t.Errorf("%s: Secret %s is not in the render", what, name)
		case key == "":
		default:
			if _, ok := s.Data[key]; !ok {
				if _, ok := s.StringData[key]; !ok {
					t.Errorf("%s: Secret %s has no key %s", what, name, key)
				}
			}
		}
	}
	var pods []*corev1.PodTemplateSpec
	var names []string
	for _, d := range r.deployments {
		pods, names = append(pods, &d.Spec.Template), append(names, "Deployment "+d.Name)
	}
	for _, j := range r.jobs {
		pods, names = append(pods, &j.Spec.Template), append(names, "Job "+j.Name)
	}
	configKeys := map[string]bool{}
	for i, p := range pods {
		what := names[i]
		volumes := map[string]corev1.Volume{}
		for _, v := range p.Spec.Volumes {
			volumes[v.Name] = v
			if v.Secret != nil {
				secretHas(what+" volume "+v.Name, v.Secret.SecretName, "")
			}
		}
		for _, c := range p.Spec.Containers {
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				// An optional key may be missing (the variable is then unset), not its Secret.
				if ref := e.ValueFrom.SecretKeyRef; ref != nil && ref.Optional != nil && *ref.Optional {
					secretHas(what+" env "+e.Name, ref.Name, "")
				} else if ref != nil {
					secretHas(what+" env "+e.Name, ref.Name, ref.Key)
				}
				if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
					if _, ok := r.configMaps[ref.Name].Data[ref.Key]; !ok {
						t.Errorf("%s env %s: ConfigMap %s with key %s is not in the render", what, e.Name, ref.Name, ref.Key)
					}
				}
			}
			known := envNames(t, imageService(c.Image))
			for _, from := range c.EnvFrom {
				switch {
				case from.SecretRef != nil:
					secretHas(what+" envFrom", from.SecretRef.Name, "")
				case from.ConfigMapRef != nil:
					cm, ok := r.configMaps[from.ConfigMapRef.Name]
					if !ok {
						t.Errorf("%s envFrom: ConfigMap %s is not in the render", what, from.ConfigMapRef.Name)
						continue
					}
					for k := range cm.Data {
						configKeys[k] = configKeys[k] || known[k]
					}
				}
			}
			for _, e := range c.Env {
				if !strings.HasSuffix(e.Name, "_FILE") || e.ValueFrom != nil {
					continue
				}
				// A whole-volume mount (no subPath), so a rotated Secret reaches the file, of a
				// key that is in the Secret and not empty: the services refuse a missing or
				// empty file, so an optional volume does not excuse a missing key.
				found := false
				for _, m := range c.VolumeMounts {
					v, ok := volumes[m.Name]
					if !ok || v.Secret == nil || path.Dir(e.Value) != path.Clean(m.MountPath) || m.SubPath != "" {
						continue
					}
					key, ok := path.Base(e.Value), len(v.Secret.Items) == 0
					for _, it := range v.Secret.Items {
						if path.Clean(it.Path) == path.Base(e.Value) {
							key, ok = it.Key, true
						}
					}
					if !ok {
						continue
					}
					found = true
					secretHas(what+" "+e.Name, v.Secret.SecretName, key)
					if s, ok := r.secrets[v.Secret.SecretName]; ok && len(s.Data[key]) == 0 && s.StringData[key] == "" {
						t.Errorf("%s: %s=%s is key %s of Secret %s, which is empty or missing", what, e.Name, e.Value, key, v.Secret.SecretName)
					}
				}
				if !found {
					t.Errorf("%s: %s=%s is not a file of a mounted Secret volume", what, e.Name, e.Value)
				}
			}
		}
	}
	for k, read := range configKeys {
		if !read {
			t.Errorf("ConfigMap key %s is read by none of the services it is given to", k)
		}
	}
	for _, a := range r.triggerAuths {
		for _, ref := range a.Spec.SecretTargetRef {
			secretHas("TriggerAuthentication "+a.Name, ref.Name, ref.Key)
		}
	}
}

// checkScaling checks the KEDA objects: the sender scales on notify.send and
// notify.send.packed and the retrier on notify.retry (the queue names the code declares),
// through a TriggerAuthentication in the render, and neither Deployment fixes a replica
// count the autoscaler would fight.
func checkScaling(t *testing.T, r render) {
	t.Helper()
	topology := rabbit.NewTopology(rabbit.DefaultName, nil)
	wantQueue := map[string][]string{
		"sender":  {topology.SendQueue(), topology.PackedSendQueue()},
		"retrier": {topology.RetryQueue()},
	}
	scaled := map[string]bool{}
	for _, s := range r.scaledObjects {
		target := s.Spec.ScaleTargetRef.Name
		scaled[target] = true
		what := "ScaledObject " + s.Name
		if want, ok := wantQueue[target]; !ok {
			t.Errorf("%s: scales %q, want the sender or retrier", what, target)
		} else {
			var got []string
			for _, tr := range s.Spec.Triggers {
				if tr.Type == "rabbitmq" {
					got = append(got, tr.Metadata["queueName"])
				}
			}
			if len(s.Spec.Triggers) != len(want) || !slices.Equal(got, want) {
				t.Errorf("%s: triggers on %v, want one rabbitmq trigger on each of %v", what, got, want)
			}
		}
		if s.Spec.MinReplicaCount == nil || *s.Spec.MinReplicaCount < 1 || s.Spec.MaxReplicaCount == nil || *s.Spec.MaxReplicaCount < *s.Spec.MinReplicaCount {
			t.Errorf("%s: want 1 ≤ minReplicaCount ≤ maxReplicaCount (a consumer must always run)", what)
		}
		for _, tr := range s.Spec.Triggers {
			if tr.Metadata["mode"] != "QueueLength" || tr.Metadata["value"] == "" {
				t.Errorf("%s: want mode QueueLength with a value", what)
			}
			if tr.AuthenticationRef == nil || r.triggerAuths[tr.AuthenticationRef.Name] == nil {
				t.Errorf("%s: authenticationRef does not name a TriggerAuthentication in the render", what)
			}
		}
		for _, d := range r.deployments {
			if d.Name == target && d.Spec.Replicas != nil {
				t.Errorf("Deployment %s: sets replicas, which KEDA owns", d.Name)
			}
		}
	}
	for target := range wantQueue {
		if !scaled[target] {
			t.Errorf("no ScaledObject for the %s", target)
		}
	}
	for _, a := range r.triggerAuths {
		if len(a.Spec.SecretTargetRef) == 0 || a.Spec.SecretTargetRef[0].Parameter != "host" {
			t.Errorf("TriggerAuthentication %s: want the AMQP URL as parameter host", a.Name)
		}
	}
}

// checkMonitoring checks that Services reach the pods' ports and the ServiceMonitor scrapes every
// service's metrics port.
func checkMonitoring(t *testing.T, r render) {
	t.Helper()
	servicePorts := map[string]bool{} // "<deployment>/<port name>" exposed by a Service
	for _, s := range r.services {
		matched := false
		for _, d := range r.deployments {
			if len(s.Spec.Selector) == 0 || !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				continue
			}
			matched = true
			for _, p := range s.Spec.Ports {
				if _, ok := containerPort(d.Spec.Template.Spec.Containers[0], p.TargetPort); !ok {
					t.Errorf("Service %s: targetPort %s is not a port of Deployment %s", s.Name, p.TargetPort.String(), d.Name)
				}
				servicePorts[d.Name+"/"+p.Name] = true
			}
		}
		if !matched {
			t.Errorf("Service %s: selects no Deployment", s.Name)
		}
	}
	if !servicePorts["producer/grpc"] {
		t.Errorf("no Service exposes the producer's grpc port")
	}
	if len(r.serviceMonitors) != 1 {
		t.Fatalf("want one ServiceMonitor, have %d", len(r.serviceMonitors))
	}
	sm := r.serviceMonitors[0]
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("ServiceMonitor %s: selector %v: %v", sm.Name, sm.Spec.Selector, err)
	}
	scraped := map[string]bool{}
	for _, s := range r.services {
		if !sel.Matches(labels.Set(s.Labels)) {
			continue
		}
		for _, e := range sm.Spec.Endpoints {
			for _, p := range s.Spec.Ports {
				if p.Name == e.Port {
					scraped[s.Name] = true
				}
			}
		}
	}
	for _, d := range r.deployments {
		if !servicePorts[d.Name+"/metrics"] || !scraped[d.Name] {
			t.Errorf("ServiceMonitor %s: does not scrape %s's metrics port", sm.Name, d.Name)
		}
	}
}

// madeImages returns the services `make images` builds images of, from the Makefile.
func madeImages(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	for _, variable := range []string{"IMAGES", "SERVICES"} {
		for _, line := range strings.Split(string(b), "\n") {
			name, value, ok := strings.Cut(line, ":=")
			if ok && strings.TrimSpace(name) == variable {
				return strings.Fields(value)
			}
		}
	}
	t.Fatal("Makefile: no IMAGES or SERVICES variable")
	return nil
}

// runtimeEnv are variables read by the Go runtime or the standard library, not by our code.
var runtimeEnv = []string{"GOMEMLIMIT", "GOMAXPROCS", "GODEBUG", "GOTRACEBACK", "SSL_CERT_FILE", "SSL_CERT_DIR", "TZ"}

var (
	literalsMu sync.Mutex
	literals   = map[string][]string{} // directory → its non-test Go string literals
)

// goLiterals returns every string literal in the non-test Go files under dir (relative to the
// repository root): the variable names a service reads and the paths it serves are among them.
func goLiterals(t *testing.T, dir string) []string {
	t.Helper()
	literalsMu.Lock()
	defer literalsMu.Unlock()
	if l, ok := literals[dir]; ok {
		return l
	}
	var out []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(filepath.Join("../..", dir), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if lit, ok := n.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if s, err := strconv.Unquote(lit.Value); err == nil {
					out = append(out, s)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", dir, err)
	}
	literals[dir] = out
	return out
}

// envNames returns the environment variables service may read: the upper-case string literals
// of its own code and of pkg/ (which holds the shared config readers), the runtime's, and
// NAME_FILE for each NAME when the code reads secrets from files by that convention.
func envNames(t *testing.T, service string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for _, n := range runtimeEnv {
		names[n] = true
	}
	fileVariants := false
	for _, dir := range []string{"pkg", "services/" + service} {
		for _, s := range goLiterals(t, dir) {
			if isEnvName(s) {
				names[s] = true
			}
			fileVariants = fileVariants || s == "_FILE"
		}
	}
	if fileVariants {
		for n := range maps.Clone(names) {
			names[n+"_FILE"] = true
		}
	}
	return names
}

func isEnvName(s string) bool {
	if len(s) < 2 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	return strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") == ""
}

// servesPath reports whether some service code routes p ("/readyz", or "GET /readyz").
func servesPath(t *testing.T, p string) bool {
	for _, dir := range []string{"pkg", "services"} {
		for _, s := range goLiterals(t, dir) {
			if s == p || strings.HasSuffix(s, " "+p) {
				return true
			}
		}
	}
	return false
}

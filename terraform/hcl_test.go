package terraform_test

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
)

// config is one Terraform directory (a module or an example), parsed.
type config struct {
	dir       string
	bodies    []*hclsyntax.Body
	variables map[string]*hclsyntax.Block
	locals    map[string]*hclsyntax.Attribute
	outputs   map[string]*hclsyntax.Block
	resources map[string]*hclsyntax.Block // "TYPE.NAME"
	data      map[string]*hclsyntax.Block // "TYPE.NAME"
	modules   map[string]*hclsyntax.Block
}

// load parses every .tf file in dir, failing the test on any syntax error.
func load(t *testing.T, dir string) *config {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.tf"))
	if len(files) == 0 {
		t.Fatalf("%s has no .tf files", dir)
	}
	c := &config{dir: dir, variables: map[string]*hclsyntax.Block{}, locals: map[string]*hclsyntax.Attribute{},
		outputs: map[string]*hclsyntax.Block{}, resources: map[string]*hclsyntax.Block{},
		data: map[string]*hclsyntax.Block{}, modules: map[string]*hclsyntax.Block{}}
	p := hclparse.NewParser()
	for _, f := range files {
		file, diags := p.ParseHCLFile(f)
		if diags.HasErrors() {
			t.Fatalf("%s does not parse: %s", f, diags)
		}
		body := file.Body.(*hclsyntax.Body)
		c.bodies = append(c.bodies, body)
		for _, b := range body.Blocks {
			switch b.Type {
			case "variable":
				c.variables[b.Labels[0]] = b
			case "output":
				c.outputs[b.Labels[0]] = b
			case "module":
				c.modules[b.Labels[0]] = b
			case "resource":
				c.resources[b.Labels[0]+"."+b.Labels[1]] = b
			case "data":
				c.data[b.Labels[0]+"."+b.Labels[1]] = b
			case "locals":
				for name, a := range b.Body.Attributes {
					c.locals[name] = a
				}
			}
		}
	}
	return c
}

// traversals returns every variable reference in body, and the labels of its dynamic blocks
// (whose iterators are references too).
// A variable's type (string, list(number)…) and a lifecycle's ignore_changes look like
// references but are not.
func traversals(body *hclsyntax.Body, iterators map[string]bool) []hcl.Traversal {
	return traversalsIn("", body, iterators)
}

func traversalsIn(blockType string, body *hclsyntax.Body, iterators map[string]bool) []hcl.Traversal {
	var out []hcl.Traversal
	for name, a := range body.Attributes {
		if (blockType == "variable" && name == "type") || (blockType == "lifecycle" && name == "ignore_changes") {
			continue
		}
		out = append(out, a.Expr.Variables()...)
	}
	for _, b := range body.Blocks {
		if b.Type == "dynamic" {
			iterators[b.Labels[0]] = true
		}
		out = append(out, traversalsIn(b.Type, b.Body, iterators)...)
	}
	return out
}

func dirs(t *testing.T) []string {
	var out []string
	for _, pattern := range []string{"modules/*", "examples/*"} {
		m, _ := filepath.Glob(pattern)
		out = append(out, m...)
	}
	sort.Strings(out)
	if len(out) != 6 {
		t.Fatalf("found %v, want four modules and two examples", out)
	}
	return out
}

func TestEveryReferenceIsDeclared(t *testing.T) {
	builtin := map[string]bool{"path": true, "each": true, "count": true, "self": true, "terraform": true}
	for _, dir := range dirs(t) {
		c := load(t, dir)
		iterators := map[string]bool{}
		var refs []hcl.Traversal
		for _, b := range c.bodies {
			refs = append(refs, traversals(b, iterators)...)
		}
		resourceTypes := map[string]bool{}
		for k := range c.resources {
			resourceTypes[strings.SplitN(k, ".", 2)[0]] = true
		}
		for _, tr := range refs {
			root := tr.RootName()
			attr := func(i int) string {
				if len(tr) > i {
					if a, ok := tr[i].(hcl.TraverseAttr); ok {
						return a.Name
					}
				}
				return ""
			}
			where := tr.SourceRange().String()
			switch {
			case root == "var":
				if c.variables[attr(1)] == nil {
					t.Errorf("%s: var.%s is not declared", where, attr(1))
				}
			case root == "local":
				if c.locals[attr(1)] == nil {
					t.Errorf("%s: local.%s is not defined", where, attr(1))
				}
			case root == "data":
				if c.data[attr(1)+"."+attr(2)] == nil {
					t.Errorf("%s: data.%s.%s is not declared", where, attr(1), attr(2))
				}
			case root == "module":
				if c.modules[attr(1)] == nil {
					t.Errorf("%s: module.%s is not declared", where, attr(1))
				}
			case builtin[root] || iterators[root]:
			case resourceTypes[root]:
				if c.resources[root+"."+attr(1)] == nil {
					t.Errorf("%s: %s.%s is not declared", where, root, attr(1))
				}
			default:
				t.Errorf("%s: reference to undeclared %q", where, root)
			}
		}
	}
}

func TestVariablesAndOutputsAreDocumented(t *testing.T) {
	for _, dir := range dirs(t) {
		c := load(t, dir)
		for name, v := range c.variables {
			if d := literal(t, v.Body.Attributes["description"]); d.IsNull() || d.AsString() == "" {
				t.Errorf("%s: variable %q has no description", dir, name)
			}
			if v.Body.Attributes["type"] == nil {
				t.Errorf("%s: variable %q has no type", dir, name)
			}
		}
		if len(c.outputs) == 0 {
			t.Errorf("%s has no outputs", dir)
		}
		for name, o := range c.outputs {
			if d := literal(t, o.Body.Attributes["description"]); d.IsNull() || d.AsString() == "" {
				t.Errorf("%s: output %q has no description", dir, name)
			}
			if o.Body.Attributes["value"] == nil {
				t.Errorf("%s: output %q has no value", dir, name)
			}
		}
	}
}

// TestExamplesMatchModules checks that each example sets only variables its module declares,
// sets every variable without a default, and reads only outputs the module has.
func TestExamplesMatchModules(t *testing.T) {
	meta := map[string]bool{"source": true, "version": true, "providers": true, "count": true, "for_each": true, "depends_on": true}
	for _, ex := range []string{"examples/aws", "examples/gcp"} {
		c := load(t, ex)
		if len(c.modules) == 0 {
			t.Fatalf("%s uses no module", ex)
		}
		for name, m := range c.modules {
			src := literal(t, m.Body.Attributes["source"]).AsString()
			mod := load(t, filepath.Join(ex, src))
			for attr := range m.Body.Attributes {
				if !meta[attr] && mod.variables[attr] == nil {
					t.Errorf("%s: module %q sets %q, which %s does not declare", ex, name, attr, src)
				}
			}
			for v, b := range mod.variables {
				if b.Body.Attributes["default"] == nil && m.Body.Attributes[v] == nil {
					t.Errorf("%s: module %q does not set required variable %q", ex, name, v)
				}
			}
			iterators := map[string]bool{}
			for _, body := range c.bodies {
				for _, tr := range traversals(body, iterators) {
					if tr.RootName() == "module" && len(tr) > 2 && tr[1].(hcl.TraverseAttr).Name == name {
						out := tr[2].(hcl.TraverseAttr).Name
						if mod.outputs[out] == nil {
							t.Errorf("%s: module.%s.%s is not an output of %s", ex, name, out, src)
						}
					}
				}
			}
		}
	}
}

// TestUserDataTemplate checks that each module renders the user-data template that exists, and
// passes it exactly the variables the template uses.
func TestUserDataTemplate(t *testing.T) {
	for _, dir := range []string{"modules/aws-spot-workers", "modules/gcp-spot-workers"} {
		c := load(t, dir)
		var call *hclsyntax.FunctionCallExpr
		for _, a := range c.locals {
			if f, ok := a.Expr.(*hclsyntax.FunctionCallExpr); ok && f.Name == "templatefile" {
				call = f
			}
		}
		if call == nil {
			t.Fatalf("%s does not call templatefile()", dir)
		}
		pathVal, diags := call.Args[0].Value(&hcl.EvalContext{Variables: map[string]cty.Value{
			"path": cty.ObjectVal(map[string]cty.Value{"module": cty.StringVal(dir)}),
		}})
		if diags.HasErrors() {
			t.Fatalf("%s: template path: %s", dir, diags)
		}
		tmplPath := pathVal.AsString()
		src, err := os.ReadFile(tmplPath)
		if err != nil {
			t.Fatalf("%s: user-data template: %v", dir, err)
		}
		tmpl, diags := hclsyntax.ParseTemplate(src, tmplPath, hcl.InitialPos)
		if diags.HasErrors() {
			t.Fatalf("%s: %s", tmplPath, diags)
		}
		used := map[string]bool{}
		for _, tr := range tmpl.Variables() {
			used[tr.RootName()] = true
		}
		given := map[string]bool{"bootstrap_args": true}
		values, ok := c.locals["user_data_values"].Expr.(*hclsyntax.ObjectConsExpr)
		if !ok {
			t.Fatalf("%s: local.user_data_values is not an object", dir)
		}
		for _, item := range values.Items {
			given[hcl.ExprAsKeyword(item.KeyExpr)] = true
		}
		if !equalSets(used, given) {
			t.Errorf("%s passes %v to the template, which uses %v", dir, keys(given), keys(used))
		}
	}
}

func TestAWSModuleSpotSettings(t *testing.T) {
	c := load(t, "modules/aws-spot-workers")
	lt := c.resources["aws_launch_template.workers"].Body
	md := block(t, lt, "metadata_options")
	expectLiteral(t, md, "http_tokens", cty.StringVal("required"))
	expectLiteral(t, md, "http_put_response_hop_limit", cty.NumberIntVal(2))
	expectRef(t, lt, "user_data", "local.user_data")

	asg := c.resources["aws_autoscaling_group.workers"].Body
	expectLiteral(t, asg, "capacity_rebalance", cty.True)
	expectRef(t, asg, "name", "var.name")
	dist := block(t, block(t, asg, "mixed_instances_policy"), "instances_distribution")
	expectRef(t, dist, "spot_allocation_strategy", "var.spot_allocation_strategy")
	expectRef(t, dist, "on_demand_base_capacity", "var.on_demand_base_capacity")
	if d := literal(t, c.variables["spot_allocation_strategy"].Body.Attributes["default"]); d.AsString() != "price-capacity-optimized" {
		t.Errorf("spot_allocation_strategy defaults to %q", d.AsString())
	}
	hook := block(t, asg, "initial_lifecycle_hook")
	expectLiteral(t, hook, "lifecycle_transition", cty.StringVal("autoscaling:EC2_INSTANCE_TERMINATING"))

	// The lifecycle permissions are scoped to this group's ARN, built from var.name.
	policy := c.data["aws_iam_policy_document.workers"].Body
	var scoped bool
	for _, st := range policy.Blocks {
		if st.Type != "statement" {
			continue
		}
		actions := literal(t, st.Body.Attributes["actions"])
		if actions.IsNull() {
			continue
		}
		for _, a := range actions.AsValueSlice() {
			if a.AsString() == "autoscaling:CompleteLifecycleAction" {
				expectRef(t, st.Body, "resources", "local.asg_arn")
				scoped = true
			}
		}
	}
	if !scoped {
		t.Error("no statement grants autoscaling:CompleteLifecycleAction")
	}
	arn := string(c.locals["asg_arn"].Expr.Range().SliceBytes(fileBytes(t, c.locals["asg_arn"].Expr.Range().Filename)))
	if !strings.Contains(arn, `"autoScalingGroupName/${var.name}"`) {
		t.Errorf("asg_arn %s is not scoped to the group's name", arn)
	}
	if c.resources["aws_autoscaling_policy.queue_depth"] == nil || c.resources["aws_autoscaling_schedule.scheduled"] == nil {
		t.Error("missing queue-depth scaling policy or schedule")
	}
}

func TestGCPModuleSpotSettings(t *testing.T) {
	c := load(t, "modules/gcp-spot-workers")
	tmpl := c.resources["google_compute_instance_template.workers"].Body
	sched := block(t, tmpl, "scheduling")
	expectLiteral(t, sched, "provisioning_model", cty.StringVal("SPOT"))
	expectRef(t, sched, "instance_termination_action", "var.instance_termination_action")
	expectLiteral(t, sched, "automatic_restart", cty.False)
	meta := string(tmpl.Attributes["metadata"].Expr.Range().SliceBytes(fileBytes(t, tmpl.Attributes["metadata"].Expr.Range().Filename)))
	if !strings.Contains(meta, "startup-script") || !strings.Contains(meta, "local.startup_script") {
		t.Errorf("metadata does not set startup-script from the template: %s", meta)
	}
	as := c.resources["google_compute_region_autoscaler.workers"].Body
	expectRef(t, as, "target", "google_compute_region_instance_group_manager.workers.id")
}

func block(t *testing.T, body *hclsyntax.Body, typ string) *hclsyntax.Body {
	t.Helper()
	for _, b := range body.Blocks {
		if b.Type == typ {
			return b.Body
		}
	}
	t.Fatalf("no %s block", typ)
	return nil
}

func literal(t *testing.T, a *hclsyntax.Attribute) cty.Value {
	t.Helper()
	if a == nil {
		return cty.NullVal(cty.String)
	}
	v, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		return cty.NullVal(cty.String)
	}
	return v
}

func expectLiteral(t *testing.T, body *hclsyntax.Body, name string, want cty.Value) {
	t.Helper()
	got := literal(t, body.Attributes[name])
	if got.IsNull() || !got.Equals(want).True() {
		t.Errorf("%s = %#v, want %#v", name, got, want)
	}
}

// expectRef checks that attribute name refers to ref (e.g. "var.name").
func expectRef(t *testing.T, body *hclsyntax.Body, name, ref string) {
	t.Helper()
	a := body.Attributes[name]
	if a == nil {
		t.Errorf("no attribute %s", name)
		return
	}
	for _, tr := range a.Expr.Variables() {
		var parts []string
		for _, step := range tr {
			switch s := step.(type) {
			case hcl.TraverseRoot:
				parts = append(parts, s.Name)
			case hcl.TraverseAttr:
				parts = append(parts, s.Name)
			}
		}
		if strings.Join(parts, ".") == ref {
			return
		}
	}
	t.Errorf("%s does not refer to %s", name, ref)
}

func fileBytes(t *testing.T, name string) []byte {
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func equalSets(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestWorkerSourcePrecondition evaluates each module's check of where workers come from (a
// release version with its SHA256SUMS pin, or all four explicit URLs and sha256), which a
// precondition enforces at plan time, and checks the release variables and their defaults.
func TestWorkerSourcePrecondition(t *testing.T) {
	pin, url := strings.Repeat("a", 64), "https://example.com/x"
	for _, dir := range []string{"modules/aws-spot-workers", "modules/gcp-spot-workers"} {
		c := load(t, dir)
		for _, name := range []string{"release_version", "release_sha256sums_sha256", "release_url"} {
			if c.variables[name] == nil {
				t.Fatalf("%s does not declare %s", dir, name)
			}
		}
		if d := literal(t, c.variables["release_url"].Body.Attributes["default"]); d.IsNull() ||
			d.AsString() != "https://github.com/buildfleet/buildfleet/releases/download" {
			t.Errorf("%s: release_url default %#v", dir, d)
		}
		src, _ := os.ReadFile(filepath.Join(dir, "main.tf"))
		if !strings.Contains(string(src), "condition     = local.source_given") {
			t.Errorf("%s: no precondition on local.source_given", dir)
		}
		for _, tc := range []struct {
			name                               string
			version, sumsPin, bURL, bSum, wURL string
			wSum                               string
			want                               bool
		}{
			{"release with pin", "v1.2.3", pin, "", "", "", "", true},
			{"release without pin", "v1.2.3", "", "", "", "", "", false},
			{"explicit URLs", "", "", url, pin, url, pin, true},
			{"explicit URLs missing the worker's sha256", "", "", url, pin, url, "", false},
			{"nothing", "", "", "", "", "", "", false},
		} {
			vars := cty.ObjectVal(map[string]cty.Value{
				"release_version": cty.StringVal(tc.version), "release_sha256sums_sha256": cty.StringVal(tc.sumsPin),
				"bootstrap_url": cty.StringVal(tc.bURL), "bootstrap_sha256": cty.StringVal(tc.bSum),
				"worker_url": cty.StringVal(tc.wURL), "worker_sha256": cty.StringVal(tc.wSum),
			})
			v, diags := c.locals["source_given"].Expr.Value(&hcl.EvalContext{Variables: map[string]cty.Value{"var": vars}})
			if diags.HasErrors() {
				t.Fatalf("%s: local.source_given: %s", dir, diags)
			}
			if v.True() != tc.want {
				t.Errorf("%s, %s: source_given = %v, want %v", dir, tc.name, v.True(), tc.want)
			}
		}
	}
}

// TestCacheBucketModules checks the object store buckets: an expiration lifecycle rule driven
// by expiration_days on the cache's prefix, and scheduler access scoped to the one bucket.
func TestCacheBucketModules(t *testing.T) {
	aws := load(t, "modules/aws-cache-bucket")
	lc := aws.resources["aws_s3_bucket_lifecycle_configuration.cache"]
	if lc == nil {
		t.Fatal("aws-cache-bucket has no lifecycle configuration")
	}
	rule := block(t, lc.Body, "rule")
	expectLiteral(t, rule, "status", cty.StringVal("Enabled"))
	expectRef(t, block(t, rule, "expiration"), "days", "var.expiration_days")
	expectRef(t, block(t, rule, "filter"), "prefix", "local.key_prefix")
	expectLiteral(t, block(t, rule, "noncurrent_version_expiration"), "noncurrent_days", cty.NumberIntVal(1))
	if aws.resources["aws_s3_bucket_versioning.cache"] != nil {
		t.Error("aws-cache-bucket turns on versioning: expired objects would never be deleted")
	}
	var listScoped bool
	for _, st := range policy(t, aws).Blocks {
		for _, d := range st.Body.Blocks {
			if d.Type == "dynamic" && len(d.Labels) == 1 && d.Labels[0] == "condition" {
				content := block(t, d.Body, "content")
				expectLiteral(t, content, "variable", cty.StringVal("s3:prefix"))
				expectLiteral(t, content, "test", cty.StringVal("StringLike"))
				listScoped = true
			}
		}
	}
	if !listScoped {
		t.Error("the scheduler's ListBucket cannot be scoped to the prefix (no s3:prefix condition)")
	}
	for _, st := range policy(t, aws).Blocks {
		res := string(st.Body.Attributes["resources"].Expr.Range().SliceBytes(fileBytes(t, st.Body.Attributes["resources"].Expr.Range().Filename)))
		if !strings.Contains(res, "aws_s3_bucket.cache.arn") || strings.Contains(res, `"*"`) {
			t.Errorf("policy statement resources %s are not scoped to the cache bucket", res)
		}
	}
	if aws.resources["aws_iam_policy.scheduler"] == nil || aws.resources["aws_s3_bucket_public_access_block.cache"] == nil {
		t.Error("aws-cache-bucket lacks the scheduler policy or the public access block")
	}

	gcp := load(t, "modules/gcp-cache-bucket")
	bucket := gcp.resources["google_storage_bucket.cache"].Body
	expectLiteral(t, bucket, "uniform_bucket_level_access", cty.True)
	expectLiteral(t, block(t, bucket, "soft_delete_policy"), "retention_duration_seconds", cty.NumberIntVal(0))
	lr := block(t, bucket, "lifecycle_rule")
	expectRef(t, block(t, lr, "condition"), "days_since_custom_time", "var.expiration_days")
	expectLiteral(t, block(t, lr, "action"), "type", cty.StringVal("Delete"))
	member := gcp.resources["google_storage_bucket_iam_member.scheduler"].Body
	expectRef(t, member, "bucket", "google_storage_bucket.cache.name")
	expectLiteral(t, member, "role", cty.StringVal("roles/storage.objectUser"))
}

// policy returns the body of the aws-cache-bucket's policy document for the scheduler.
func policy(t *testing.T, c *config) *hclsyntax.Body {
	t.Helper()
	d := c.data["aws_iam_policy_document.scheduler"]
	if d == nil {
		t.Fatal("aws-cache-bucket has no scheduler policy document")
	}
	return d.Body
}

// TestReleaseURLValidation evaluates each spot-worker module's validation of release_url: an
// https:// URL with a host and no query, fragment or trailing / (the user-data appends
// /VERSION/SHA256SUMS to it and fetches it with curl; a trailing / would make that //VERSION).
func TestReleaseURLValidation(t *testing.T) {
	funcs := map[string]function.Function{"can": tryfunc.CanFunc, "regex": stdlib.RegexFunc}
	for _, dir := range []string{"modules/aws-spot-workers", "modules/gcp-spot-workers"} {
		c := load(t, dir)
		v := c.variables["release_url"]
		if v == nil {
			t.Fatalf("%s does not declare release_url", dir)
		}
		var conditions []hclsyntax.Expression
		for _, b := range v.Body.Blocks {
			if b.Type == "validation" {
				conditions = append(conditions, b.Body.Attributes["condition"].Expr)
			}
		}
		if len(conditions) == 0 {
			t.Fatalf("%s: release_url has no validation", dir)
		}
		for url, want := range map[string]bool{
			"https://github.com/buildfleet/buildfleet/releases/download": true,
			"https://mirror.example.com":                                 true,
			"https://mirror.example.com/mirrors/buildfleet":              true,
			"https://mirror.example.com/releases/":                       false,
			"https://mirror.example.com/":                                false,
			"https://mirror.example.com/releases//":                      false,
			"https://mirror.example.com/releases?token=x":                false,
			"https://mirror.example.com/releases#x":                      false,
			"http://mirror.example.com/releases":                         false,
			"s3://bucket/releases":                                       false,
			"https:///releases":                                          false,
			"":                                                           false,
		} {
			ok := true
			for _, cond := range conditions {
				got, diags := cond.Value(&hcl.EvalContext{
					Variables: map[string]cty.Value{"var": cty.ObjectVal(map[string]cty.Value{"release_url": cty.StringVal(url)})},
					Functions: funcs,
				})
				if diags.HasErrors() {
					t.Fatalf("%s: release_url validation: %s", dir, diags)
				}
				ok = ok && got.True()
			}
			if ok != want {
				t.Errorf("%s: release_url %q valid = %v, want %v", dir, url, ok, want)
			}
		}
	}
}

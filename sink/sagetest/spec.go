package sagetest

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
)

// specJSON is Sage's Swagger 2.0 spec of the v3.1 Accounts API (as vendored by
// SynergiTech/sage-php). It lacks the Core endpoints (/businesses), security and error shapes.
//
//go:embed testdata/sage-accounting-v3.1-accounts.swagger.json
var specJSON []byte

// spec is the converted spec with the operations the sandbox validates against, patched as
// described on loadSpec.
type spec struct {
	doc *openapi3.T
	ops map[string]*specOp // "POST /contacts", "GET /contacts/{key}", …
}

type specOp struct {
	path     string
	pathItem *openapi3.PathItem
	req      *openapi3.Operation // for request validation
	resp     *openapi3.Operation // for response validation
	query    map[string]bool     // declared query parameters
	wrapper  string              // the body's single top-level key, "contact", "sales_invoice", …
}

// loadSpec converts the embedded spec to OpenAPI 3 once per process and derives, for each
// operation, a request and a response variant:
//
//   - request bodies: money (type number) may be a JSON number or a numeric string; objects
//     refuse attributes the spec does not list, except idempotency_id on the resource object and
//     id on invoice lines; a string attribute takes the maxLength of the response attribute of
//     the same name (contact.reference ≤ 10, sales_invoice.reference ≤ 25, …);
//   - query parameters declared date-time accept a date too (Sage documents both);
//   - responses: numbers may be strings, and list operations, which the spec declares as bare
//     arrays, return Sage's {$total, $page, $next, $back, $itemsPerPage, $items} envelope.
var loadSpec = sync.OnceValue(func() *spec {
	var doc2 openapi2.T
	if err := json.Unmarshal(specJSON, &doc2); err != nil {
		panic("sagetest: parsing the embedded Sage spec: " + err.Error())
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		panic("sagetest: converting the embedded Sage spec: " + err.Error())
	}
	sp := &spec{doc: doc, ops: map[string]*specOp{}}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			sp.ops[method+" "+path] = newSpecOp(path, item, method, op)
		}
	}
	return sp
})

func newSpecOp(path string, item *openapi3.PathItem, method string, op *openapi3.Operation) *specOp {
	so := &specOp{path: path, pathItem: item, query: map[string]bool{}}
	req, resp := *op, *op

	req.Parameters = nil
	for _, p := range op.Parameters {
		if p.Value == nil {
			continue
		}
		if p.Value.In == openapi3.ParameterInQuery {
			so.query[p.Value.Name] = true
		}
		if s := p.Value.Schema; s != nil && s.Value != nil && s.Value.Format == "date-time" {
			pv := *p.Value
			pv.Schema = openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, Pattern: dateOrDateTime})
			p = &openapi3.ParameterRef{Value: &pv}
		}
		req.Parameters = append(req.Parameters, p)
	}

	// The 2xx schema, used for response validation and for request maxLengths.
	var okSchema *openapi3.SchemaRef
	for code, r := range op.Responses.Map() {
		if strings.HasPrefix(code, "2") && r.Value != nil {
			if mt := r.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil {
				okSchema = mt.Schema
			}
		}
	}

	if rb := op.RequestBody; rb != nil && rb.Value != nil {
		if mt := rb.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil && mt.Schema.Value != nil {
			body := cloneSchema(mt.Schema, requestEdit)
			so.wrapper = patchRequestBody(body.Value, okSchema)
			rbv := *rb.Value
			rbv.Content = openapi3.NewContentWithJSONSchemaRef(body)
			req.RequestBody = &openapi3.RequestBodyRef{Value: &rbv}
		}
	}

	resp.Responses = openapi3.NewResponses()
	for code, r := range op.Responses.Map() {
		if r.Value == nil {
			continue
		}
		rv := *r.Value
		if mt := r.Value.Content.Get("application/json"); mt != nil && mt.Schema != nil && mt.Schema.Value != nil {
			s := cloneSchema(mt.Schema, responseEdit)
			if method == http.MethodGet && !strings.Contains(path, "{") && s.Value.Type.Is(openapi3.TypeArray) {
				s = envelope(s.Value.Items)
			}
			rv.Content = openapi3.NewContentWithJSONSchemaRef(s)
		}
		resp.Responses.Set(code, &openapi3.ResponseRef{Value: &rv})
	}
	so.req, so.resp = &req, &resp
	return so
}

const (
	dateOrDateTime = `^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$`
	decimalString  = `^-?[0-9]+(\.[0-9]+)?$`
)

// cloneSchema deep-copies a schema graph (cycles kept), calling edit on each copy after its
// children are copied. The spec's own schemas are never changed.
func cloneSchema(root *openapi3.SchemaRef, edit func(*openapi3.Schema)) *openapi3.SchemaRef {
	seen := map[*openapi3.Schema]*openapi3.Schema{}
	var ref func(r *openapi3.SchemaRef) *openapi3.SchemaRef
	var refs func(rs openapi3.SchemaRefs) openapi3.SchemaRefs
	ref = func(r *openapi3.SchemaRef) *openapi3.SchemaRef {
		if r == nil || r.Value == nil {
			return r
		}
		// The $ref name is kept, so that printing a schema (kin-openapi does, in errors) stops
		// at references instead of looping through the spec's recursive definitions.
		if c, ok := seen[r.Value]; ok {
			return &openapi3.SchemaRef{Ref: r.Ref, Value: c}
		}
		c := *r.Value
		seen[r.Value] = &c
		if r.Value.Properties != nil {
			c.Properties = openapi3.Schemas{}
			for k, p := range r.Value.Properties {
				c.Properties[k] = ref(p)
			}
		}
		c.Items = ref(r.Value.Items)
		c.Not = ref(r.Value.Not)
		c.AllOf, c.AnyOf, c.OneOf = refs(r.Value.AllOf), refs(r.Value.AnyOf), refs(r.Value.OneOf)
		c.AdditionalProperties.Schema = ref(r.Value.AdditionalProperties.Schema)
		edit(&c)
		return &openapi3.SchemaRef{Ref: r.Ref, Value: &c}
	}
	refs = func(rs openapi3.SchemaRefs) openapi3.SchemaRefs {
		if rs == nil {
			return nil
		}
		out := make(openapi3.SchemaRefs, len(rs))
		for i, r := range rs {
			out[i] = ref(r)
		}
		return out
	}
	return ref(root)
}

// numberOrString makes a number schema accept a numeric string too, keeping its bounds.
func numberOrString(s *openapi3.Schema) {
	if s.Type == nil || !s.Type.Is(openapi3.TypeNumber) {
		return
	}
	num := &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeNumber}, Min: s.Min, Max: s.Max}
	str := &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, Pattern: decimalString}
	s.Type, s.Format, s.Min, s.Max = nil, "", nil, nil
	s.AnyOf = openapi3.SchemaRefs{openapi3.NewSchemaRef("", num), openapi3.NewSchemaRef("", str)}
}

func requestEdit(s *openapi3.Schema) {
	numberOrString(s)
	if s.Type != nil && s.Type.Is(openapi3.TypeObject) && s.Properties != nil {
		no := false
		s.AdditionalProperties.Has = &no
	}
}

func responseEdit(s *openapi3.Schema) { numberOrString(s) }

// patchRequestBody allows idempotency_id on the resource object and id on invoice lines, copies
// maxLengths from the response schema, and returns the resource object's name.
func patchRequestBody(body *openapi3.Schema, ok *openapi3.SchemaRef) string {
	if len(body.Properties) != 1 {
		return ""
	}
	var name string
	var res *openapi3.SchemaRef
	for k, v := range body.Properties {
		name, res = k, v
	}
	if res.Value == nil || res.Value.Properties == nil {
		return name
	}
	str := func() *openapi3.SchemaRef {
		return openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}})
	}
	res.Value.Properties["idempotency_id"] = str()
	if lines := res.Value.Properties["invoice_lines"]; lines != nil && lines.Value.Items != nil && lines.Value.Items.Value != nil {
		lines.Value.Items.Value.Properties["id"] = str()
	}
	if ok != nil {
		copyMaxLength(res.Value, ok.Value, 0)
	}
	return name
}

// copyMaxLength gives each string attribute of req the maxLength of the attribute of the same
// name in resp, recursing into objects and arrays of objects.
func copyMaxLength(req, resp *openapi3.Schema, depth int) {
	if req == nil || resp == nil || depth > 4 {
		return
	}
	for k, p := range req.Properties {
		rp := resp.Properties[k]
		if p == nil || p.Value == nil || rp == nil || rp.Value == nil {
			continue
		}
		switch {
		case p.Value.Type.Is(openapi3.TypeString) && rp.Value.MaxLength != nil:
			p.Value.MaxLength = rp.Value.MaxLength
		case p.Value.Type.Is(openapi3.TypeObject):
			copyMaxLength(p.Value, rp.Value, depth+1)
		case p.Value.Type.Is(openapi3.TypeArray) && p.Value.Items != nil && rp.Value.Items != nil:
			copyMaxLength(p.Value.Items.Value, rp.Value.Items.Value, depth+1)
		}
	}
}

// envelope is the schema of Sage's list response around items.
func envelope(items *openapi3.SchemaRef) *openapi3.SchemaRef {
	integer := func() *openapi3.SchemaRef {
		return openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeInteger}})
	}
	link := func() *openapi3.SchemaRef {
		return openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeString}, Nullable: true})
	}
	return openapi3.NewSchemaRef("", &openapi3.Schema{
		Type:     &openapi3.Types{openapi3.TypeObject},
		Required: []string{"$total", "$page", "$next", "$back", "$itemsPerPage", "$items"},
		Properties: openapi3.Schemas{
			"$total": integer(), "$page": integer(), "$itemsPerPage": integer(),
			"$next": link(), "$back": link(),
			"$items": openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{openapi3.TypeArray}, Items: items}),
		},
	})
}

// route returns the spec operation for a request to specPath, or nil when the spec has none.
func (sp *spec) op(method, specPath string) *specOp { return sp.ops[method+" "+specPath] }

// validateRequest checks the query string and body of r against op and returns Sage's error
// items, or nil. body is the request body already read.
func (so *specOp) validateRequest(r *http.Request, body []byte, pathID string) []errorItem {
	var items []errorItem
	for name := range r.URL.Query() {
		if !so.query[name] {
			items = append(items, errorItem{Severity: "error", DataCode: "RecordInvalid",
				Message: "is not a parameter of this endpoint.", Source: name})
		}
	}
	req := r.Clone(context.Background())
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	if req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: map[string]string{"key": pathID},
		Route: &routers.Route{Spec: loadSpec().doc, Path: so.path, PathItem: so.pathItem,
			Method: r.Method, Operation: so.req},
		Options: &openapi3filter.Options{MultiError: true, SkipSettingDefaults: true},
	}
	if err := openapi3filter.ValidateRequest(r.Context(), in); err != nil {
		items = append(items, so.errorItems(err)...)
	}
	return items
}

var unsupportedProperty = regexp.MustCompile(`property "([^"]+)" is unsupported`)

// errorItems turns kin-openapi's validation errors into Sage's RecordInvalid items.
func (so *specOp) errorItems(err error) []errorItem {
	var out []errorItem
	add := func(source, msg string) {
		out = append(out, errorItem{Severity: "error", DataCode: "RecordInvalid", Message: msg, Source: source})
	}
	var walk func(err error, param string)
	walk = func(err error, param string) {
		var multi openapi3.MultiError
		var reqErr *openapi3filter.RequestError
		var schemaErr *openapi3.SchemaError
		switch {
		case errors.As(err, &multi):
			for _, e := range multi {
				walk(e, param)
			}
		case errors.As(err, &reqErr):
			switch {
			case reqErr.Parameter != nil:
				if reqErr.Err == nil {
					add(reqErr.Parameter.Name, reqErr.Reason)
					return
				}
				walk(reqErr.Err, reqErr.Parameter.Name)
			case errors.Is(reqErr.Err, openapi3filter.ErrInvalidRequired):
				add(so.wrapper, "This field is required.")
			case reqErr.Err != nil:
				walk(reqErr.Err, "")
			default:
				add("", "The request body is invalid: "+reqErr.Reason)
			}
		case errors.As(err, &schemaErr):
			ptr := schemaErr.JSONPointer()
			if m := unsupportedProperty.FindStringSubmatch(schemaErr.Reason); m != nil {
				ptr = append(ptr, m[1])
			}
			source := param
			if source == "" {
				source = so.sourcePath(ptr)
			}
			add(source, schemaMessage(schemaErr))
		default:
			add(param, err.Error())
		}
	}
	walk(err, "")
	return out
}

// schemaMessage words a schema error the way Sage does.
func schemaMessage(e *openapi3.SchemaError) string {
	switch e.SchemaField {
	case "required":
		return msgRequired
	case "properties", "additionalProperties":
		if unsupportedProperty.MatchString(e.Reason) {
			return "is not a permitted attribute."
		}
	case "maxLength":
		if e.Schema != nil && e.Schema.MaxLength != nil {
			return fmt.Sprintf("is too long (maximum is %d characters)", *e.Schema.MaxLength)
		}
	case "anyOf":
		return "must be a number"
	case "nullable":
		return "can't be null"
	}
	return e.Reason
}

// sourcePath turns a JSON pointer under the body into Sage's $source: the resource object's name
// is dropped and array indexes are bracketed, e.g. "invoice_lines[0].tax_amount".
func (so *specOp) sourcePath(ptr []string) string {
	if len(ptr) > 0 && ptr[0] == so.wrapper && len(ptr) > 1 {
		ptr = ptr[1:]
	}
	var b strings.Builder
	for _, p := range ptr {
		if _, err := strconv.Atoi(p); err == nil {
			b.WriteString("[" + p + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p)
	}
	return b.String()
}

// ValidateResponse checks one answer of the sandbox (or of real Sage) to a /v3.1 request
// against the v3.1 spec: status, and body for the documented 2xx statuses. Money sent as JSON
// strings is accepted, and list responses are checked as Sage's $items envelope. Responses of
// endpoints the spec lacks (/businesses) and error statuses are not checked. r is the request
// that was answered; its URL path may carry the /v3.1 prefix or not.
func ValidateResponse(r *http.Request, status int, header http.Header, body []byte) error {
	path := strings.TrimPrefix(r.URL.Path, "/v3.1")
	specPath, id := specPathOf(path)
	so := loadSpec().op(r.Method, specPath)
	if so == nil {
		return nil
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: r, PathParams: map[string]string{"key": id},
			Route: &routers.Route{Spec: loadSpec().doc, Path: so.path, PathItem: so.pathItem,
				Method: r.Method, Operation: so.resp},
		},
		Status: status, Header: header, Body: io.NopCloser(bytes.NewReader(body)),
		Options: &openapi3filter.Options{MultiError: true},
	}
	if err := openapi3filter.ValidateResponse(r.Context(), in); err != nil {
		return fmt.Errorf("%s %s → %d does not match the Sage spec: %w", r.Method, r.URL.Path, status, err)
	}
	return nil
}

// specPathOf maps a request path under /v3.1 to the spec's path template and the {key}:
// "/contacts/abc" → "/contacts/{key}", "abc".
func specPathOf(path string) (string, string) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	switch len(segs) {
	case 1:
		return "/" + segs[0], ""
	case 2:
		return "/" + segs[0] + "/{key}", segs[1]
	default:
		return "/" + segs[0] + "/{key}/" + strings.Join(segs[2:], "/"), segs[1]
	}
}

/* The edge's headers, in C: the compiled build's native steps for trackpoint.http.connection, whose pure-Python
 * code stays the reference (tests/test_http.py gives both the same input and compares what they answer).
 *
 *     canonical(name: bytes, kept: tuple[bytes, ...]) -> bytes
 *
 * `kept` are the lower-case names kept; the answer is the kept name that `name` spells in any case (ASCII letters
 * only, as bytes.lower()), or b"" for a name not kept: HeaderNames.canonical.
 *
 *     Head(kept, kinds, max_count, max_bytes, on_framing, reject)
 *
 * A connection's header step: httptools calls it with each header's name and value instead of
 * HttpConnection.on_header, and it does what that method does. Every header counts against the caps
 * (`max_count` headers, `max_bytes` of names and values: Reject(431, "headers_too_large")); a kept one goes into
 * `headers` under its kept name, unless it is a trailer (`trailers`, set once a chunked body began). `kinds` gives
 * each kept name its handling: PLAIN; FRAMING (`on_framing(name, value)` is called first, as on_header calls
 * on_framing_header); HOST (a second one is Reject(400, "bad_host")); LIST (repeated lines joined with ", ").
 * `reset()` starts the next request: counts at zero, no trailers, and a new `headers` dict, which it returns.
 *
 * Why by hand: the header name is a new bytes object for every header of every request, so the Python way (a dict
 * of the spellings met) hashes it each time: about 450 instructions a header, where comparing it with a dozen kept
 * names of the same length takes a few dozen. And a browser's pixel request has a dozen headers or more, of which
 * the edge keeps two or three: taking each line here instead of in a Python method saves about 500 instructions a
 * line (bench/hotpath.py --instructions --browser, 14 lines: 69,555 instructions a request before, 62,534 after).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <structmember.h>

/* The index in `kept` of the name `name` spells, -1 for none, -2 (TypeError set) for a kept name not bytes. */
static Py_ssize_t
kept_index(const unsigned char *name, Py_ssize_t size, PyObject *kept)
{
    Py_ssize_t count = PyTuple_GET_SIZE(kept);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *candidate = PyTuple_GET_ITEM(kept, i);
        if (!PyBytes_CheckExact(candidate)) {
            PyErr_SetString(PyExc_TypeError, "canonical(): kept names are bytes");
            return -2;
        }
        if (PyBytes_GET_SIZE(candidate) != size) {
            continue;
        }
        const unsigned char *lower = (const unsigned char *)PyBytes_AS_STRING(candidate);
        Py_ssize_t j = 0;
        for (; j < size; j++) {
            unsigned char c = name[j];
            if (c >= 'A' && c <= 'Z') {
                c += 'a' - 'A';
            }
            if (c != lower[j]) {
                break;
            }
        }
        if (j == size) {
            return i;
        }
    }
    return -1;
}

static PyObject *
canonical(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyTuple_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "canonical(name: bytes, kept: tuple[bytes, ...])");
        return NULL;
    }
    Py_ssize_t index = kept_index(
        (const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), args[1]);
    if (index == -2) {
        return NULL;
    }
    if (index >= 0) {
        return Py_NewRef(PyTuple_GET_ITEM(args[1], index));
    }
    return PyBytes_FromStringAndSize(NULL, 0); /* the empty bytes object, shared */
}

/* --- Head ------------------------------------------------------------------------------------------------------ */

enum { PLAIN = 0, FRAMING = 1, HOST = 2, LIST = 3 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *headers;    /* dict: the current request's kept headers */
    PyObject *kept;       /* tuple[bytes, ...]: the kept lower-case names */
    unsigned char *kinds; /* each kept name's handling, by index */
    PyObject *on_framing; /* called with (name, value) for a FRAMING name */
    PyObject *reject;     /* the Reject class */
    Py_ssize_t count;
    Py_ssize_t bytes;
    Py_ssize_t max_count;
    Py_ssize_t max_bytes;
    char trailers;
} Head;

static PyObject *
head_refuse(Head *self, int status, const char *reason)
{
    PyObject *error = PyObject_CallFunction(self->reject, "is", status, reason);
    if (error != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(error), error);
        Py_DECREF(error);
    }
    return NULL;
}

static PyObject *
head_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Head *self = (Head *)callable;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL || !PyBytes_CheckExact(args[0]) ||
        !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "Head(name: bytes, value: bytes)");
        return NULL;
    }
    PyObject *name = args[0];
    PyObject *value = args[1];
    self->count += 1;
    self->bytes += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value);
    if (self->count > self->max_count || self->bytes > self->max_bytes) {
        return head_refuse(self, 431, "headers_too_large");
    }
    Py_ssize_t index = kept_index((const unsigned char *)PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), self->kept);
    if (index < 0) {
        return index == -1 ? Py_NewRef(Py_None) : NULL;
    }
    if (self->trailers) {
        Py_RETURN_NONE;
    }
    PyObject *key = PyTuple_GET_ITEM(self->kept, index);
    PyObject *headers = self->headers;
    switch (self->kinds[index]) {
    case FRAMING: {
        PyObject *call_args[2] = {key, value};
        PyObject *result = PyObject_Vectorcall(self->on_framing, call_args, 2, NULL);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
        headers = self->headers; /* read again after Python code ran */
        if (headers == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "Head: cleared while in use");
            return NULL;
        }
        break;
    }
    case HOST: {
        int present = PyDict_Contains(headers, key);
        if (present != 0) {
            return present < 0 ? NULL : head_refuse(self, 400, "bad_host"); /* RFC 9112 section 3.2 */
        }
        break;
    }
    case LIST: {
        PyObject *before = PyDict_GetItemWithError(headers, key); /* borrowed */
        if (before != NULL) {
            if (!PyBytes_CheckExact(before)) {
                PyErr_SetString(PyExc_TypeError, "Head: a header value is not bytes");
                return NULL;
            }
            Py_ssize_t left = PyBytes_GET_SIZE(before);
            Py_ssize_t right = PyBytes_GET_SIZE(value);
            PyObject *joined = PyBytes_FromStringAndSize(NULL, left + 2 + right);
            if (joined == NULL) {
                return NULL;
            }
            char *out = PyBytes_AS_STRING(joined);
            memcpy(out, PyBytes_AS_STRING(before), (size_t)left);
            out[left] = ',';
            out[left + 1] = ' ';
            memcpy(out + left + 2, PyBytes_AS_STRING(value), (size_t)right);
            int failed = PyDict_SetItem(headers, key, joined);
            Py_DECREF(joined);
            return failed ? NULL : Py_NewRef(Py_None);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
        break;
    }
    default:
        break;
    }
    if (PyDict_SetItem(headers, key, value) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
head_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"kept", "kinds", "max_count", "max_bytes", "on_framing", "reject", NULL};
    PyObject *kept, *kinds, *on_framing, *reject;
    Py_ssize_t max_count, max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!nnOO:Head", names, &PyTuple_Type, &kept, &PyTuple_Type,
                                     &kinds, &max_count, &max_bytes, &on_framing, &reject)) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(kept);
    if (PyTuple_GET_SIZE(kinds) != count) {
        PyErr_SetString(PyExc_ValueError, "Head(): one kind for each kept name");
        return NULL;
    }
    if (!PyCallable_Check(on_framing) || !PyCallable_Check(reject)) {
        PyErr_SetString(PyExc_TypeError, "Head(): on_framing and reject are callables");
        return NULL;
    }
    unsigned char *codes = PyMem_Malloc(count ? (size_t)count : 1);
    if (codes == NULL) {
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(kept, i);
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(kinds, i));
        if (!PyBytes_CheckExact(name) || kind < PLAIN || kind > LIST) {
            PyMem_Free(codes);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "Head(): kept names are bytes, kinds 0 to 3");
            }
            return NULL;
        }
        codes[i] = (unsigned char)kind;
    }
    PyObject *headers = PyDict_New();
    if (headers == NULL) {
        PyMem_Free(codes);
        return NULL;
    }
    Head *self = (Head *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(headers);
        PyMem_Free(codes);
        return NULL;
    }
    self->vectorcall = head_call;
    self->headers = headers;
    self->kept = Py_NewRef(kept);
    self->kinds = codes;
    self->on_framing = Py_NewRef(on_framing);
    self->reject = Py_NewRef(reject);
    self->max_count = max_count;
    self->max_bytes = max_bytes;
    return (PyObject *)self;
}

static int
head_traverse(Head *self, visitproc visit, void *arg)
{
    Py_VISIT(self->headers);
    Py_VISIT(self->kept);
    Py_VISIT(self->on_framing);
    Py_VISIT(self->reject);
    return 0;
}

static int
head_clear(Head *self)
{
    Py_CLEAR(self->headers);
    Py_CLEAR(self->kept);
    Py_CLEAR(self->on_framing);
    Py_CLEAR(self->reject);
    return 0;
}

static void
head_dealloc(Head *self)
{
    PyObject_GC_UnTrack(self);
    head_clear(self);
    PyMem_Free(self->kinds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
head_reset(Head *self, PyObject *unused)
{
    (void)unused;
    PyObject *headers = PyDict_New();
    if (headers == NULL) {
        return NULL;
    }
    Py_XSETREF(self->headers, headers);
    self->count = 0;
    self->bytes = 0;
    self->trailers = 0;
    return Py_NewRef(headers);
}

static PyMethodDef head_methods[] = {
    {"reset", (PyCFunction)head_reset, METH_NOARGS,
     "The next request: counts at zero, no trailers, and a new headers dict, returned."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef head_members[] = {
    {"headers", T_OBJECT_EX, offsetof(Head, headers), READONLY, "The current request's kept headers."},
    {"count", T_PYSSIZET, offsetof(Head, count), READONLY, "Header lines of the current request so far."},
    {"size", T_PYSSIZET, offsetof(Head, bytes), READONLY, "Bytes of their names and values so far."},
    {"trailers", T_BOOL, offsetof(Head, trailers), 0, "A chunked body began: header lines now are its trailer."},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Head, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject HeadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trackpoint.http._headers.Head",
    .tp_doc = "A connection's header step: called with each header's name and value (see the module).",
    .tp_basicsize = sizeof(Head),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = head_new,
    .tp_dealloc = (destructor)head_dealloc,
    .tp_traverse = (traverseproc)head_traverse,
    .tp_clear = (inquiry)head_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Head, vectorcall),
    .tp_methods = head_methods,
    .tp_members = head_members,
};

static PyMethodDef methods[] = {
    {"canonical", (PyCFunction)(void (*)(void))canonical, METH_FASTCALL,
     "The kept lower-case name a header name spells, or b\"\": canonical(name, kept) -> bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "trackpoint.http._headers",
    .m_doc = "The edge's headers, in C: the compiled build's HeaderNames.canonical and header step (Head).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__headers(void)
{
    if (PyType_Ready(&HeadType) < 0) {
        return NULL;
    }
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && PyModule_AddObjectRef(created, "Head", (PyObject *)&HeadType) < 0) {
        Py_CLEAR(created);
    }
    return created;
}

// Progressive enhancement of the rule form: show only the filters and connection fields that apply
// to the chosen platform, triggers and connection type. Without JavaScript every field is shown and
// the server's validation says which do not apply.
(function () {
  "use strict";
  var form = document.getElementById("rule-form");
  if (!form) { return; }
  var PRICE_RANGE = ["lead_sold", "campaign_sold"];

  function field(name) { return form.querySelector("[name='" + name + "']"); }
  function wrapper(name) {
    var input = field(name);
    return input ? input.closest("label.field") : null;
  }
  function show(element, visible) { if (element) { element.hidden = !visible; } }

  function update() {
    var platform = field("platform").value;
    document.querySelectorAll(".triggers > div").forEach(function (group) {
      var own = group.getAttribute("data-platform") === platform;
      show(group, own);
      if (!own) { group.querySelectorAll("input").forEach(function (box) { box.checked = false; }); }
    });
    show(wrapper("pools_include"), platform === "call_logic");
    var triggers = Array.prototype.map.call(
      form.querySelectorAll("input[name=trigger]:checked"), function (box) { return box.value; });
    var rangeAllowed = triggers.length > 0 && triggers.every(function (t) { return PRICE_RANGE.indexOf(t) >= 0; });
    var range = form.querySelector("select[name=price_op] option[value=range]");
    if (range) { range.hidden = !rangeAllowed; range.disabled = !rangeAllowed; }
    var op = field("price_op").value;
    show(wrapper("price_value"), op !== "" && op !== "gt_zero" && op !== "range");
    show(wrapper("price_min"), op === "range");
    show(wrapper("price_max"), op === "range");
    var manual = field("connection_type").value === "manual";
    show(form.querySelector(".manual"), manual);
    show(wrapper("esp_name"), !manual);
    var level = field("level").value;
    show(wrapper("product_id"), level === "product");
    show(wrapper("campaign_id"), level === "campaign");
  }

  form.addEventListener("change", update);
  update();
})();
